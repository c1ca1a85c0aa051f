"""The evaluate stage's pictures: confusion matrix, reliability diagram, prediction grid.

Written by matplotlib's Agg backend (no display); PNG metadata carries no dates, so the same
numbers give the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on CI or servers
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path) -> None:
    plt = _pyplot()
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test; colour = share of the true class)")
    if len(classes) <= 20:
        for (t, p), n in np.ndenumerate(cm):
            ax.text(p, t, str(n), ha="center", va="center", fontsize=7, color="white" if share[t, p] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reliability(table: list[dict[str, float]], ece: float, path: Path) -> None:
    plt = _pyplot()
    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    centers = [(r["lower"] + r["upper"]) / 2 for r in table]
    width = table[0]["upper"] - table[0]["lower"]
    filled = [r for r in table if r["count"]]
    ax.bar(centers, [r["accuracy"] for r in table], width=width, edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot(
        [r["confidence"] for r in filled],
        [r["accuracy"] for r in filled],
        "o-",
        color="C1",
        label="(mean confidence, accuracy) per bin",
    )
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability diagram (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    hx.bar(centers, [r["count"] for r in table], width=width, color="gray")
    hx.set_xlabel("confidence of the top-1 prediction")
    hx.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def grid_selection(labels: np.ndarray, predicted: np.ndarray, confidence: np.ndarray, n: int) -> np.ndarray:
    """Up to n test indices for the prediction grid: the true classes take turns, and each class
    alternates its most confident mistakes with correct predictions, so the grid shows every
    class, where it fails and what it gets right (mistakes alone all came from the first class)."""
    queues = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        wrong = idx[predicted[idx] != c]
        wrong = list(wrong[np.argsort(-confidence[wrong], kind="stable")])
        right = list(idx[predicted[idx] == c])
        alternating = [i for pair in zip(wrong, right, strict=False) for i in pair]
        rest = wrong[len(right) :] + right[len(wrong) :]
        queues.append(alternating + rest)
    chosen: list[int] = []
    for round_ in range(max((len(q) for q in queues), default=0)):
        chosen += [q[round_] for q in queues if round_ < len(q)]
        if len(chosen) >= n:
            break
    return np.asarray(chosen[:n], dtype=int)


def plot_predictions(
    images: Mapping[int, np.ndarray] | np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    chosen: np.ndarray,
    path: Path,
) -> None:
    """A grid of the `chosen` test images (grid_selection), titled predicted (true), mistakes
    framed in red; `images` maps each chosen index to its image (the split need not be in memory)."""
    plt = _pyplot()
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    cols = int(np.ceil(np.sqrt(max(len(chosen), 1))))
    rows = int(np.ceil(len(chosen) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, chosen, strict=False):
        ok = predicted[i] == labels[i]
        ax.imshow(images[i], interpolation="nearest")
        ax.set_title(
            f"{classes[predicted[i]]} {probs[i, predicted[i]]:.0%}\n(true: {classes[labels[i]]})",
            fontsize=7,
            color="black" if ok else "red",
        )
        ax.axis("on")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_edgecolor("green" if ok else "red")
            spine.set_linewidth(1 if ok else 3)
    fig.suptitle(
        f"Test predictions: {len(wrong)} of {len(labels)} misclassified "
        "overall; in red, each class's most confident mistakes",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
