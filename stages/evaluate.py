"""Evaluate stage: the fine-tuned Keras model on the test split.

Writes reports/evaluate/:
- metrics.json: accuracy, top-5 accuracy, loss, expected calibration error, macro P/R/F1
  (`dvc metrics show`, `dvc exp show`);
- per_class.csv: precision, recall, F1 and support per class;
- confused_pairs.csv: the most frequent (true, predicted) mistakes;
- plots/confusion.csv (one row per image, for `dvc plots`' confusion template) and
  plots/calibration.csv (reliability diagram data);
- confusion_matrix.png, reliability_diagram.png, predictions_grid.png.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from stages.atomic import atomic_dir, write_json
from stages.dataset import load_info, load_split
from stages.model_io import keras_predict, load_keras_model
from stages.params import EvaluateParams, Params
from stages.paths import Paths

log = logging.getLogger(__name__)

TOP_K = 5
_EPS = 1e-7  # probabilities are clipped here in the loss, as Keras' cross-entropy does


# ---------------------------------------------------------------- metrics (pure numpy)


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, predicted), 1)
    return cm


def per_class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class; 0 where undefined (no predictions / no images)."""
    tp = np.diag(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def top_k_accuracy(probs: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean categorical cross-entropy of the true class."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], _EPS, 1.0)).mean())


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error over equal-width confidence bins, and the per-bin table.

    ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b| over the top-1 prediction.
    """
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Bin b holds confidences in (edges[b], edges[b+1]]; a confidence of 0 goes to bin 0.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        n = int(mask.sum())
        acc = float(correct[mask].mean()) if n else 0.0
        conf = float(confidence[mask].mean()) if n else 0.0
        ece += n / max(len(labels), 1) * abs(acc - conf)
        table.append({"bin": b, "lower": float(edges[b]), "upper": float(edges[b + 1]), "confidence": conf, "accuracy": acc, "count": n})
    return float(ece), table


def most_confused(cm: np.ndarray, classes: list[str], k: int) -> list[dict[str, Any]]:
    """The k largest off-diagonal counts, with the share of the true class they take."""
    off = cm.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:k]
    pairs = []
    for flat in order:
        t, p = divmod(int(flat), cm.shape[1])
        if off[t, p] == 0:
            break
        pairs.append(
            {"true": classes[t], "predicted": classes[p], "count": int(off[t, p]), "share_of_true": float(off[t, p] / cm[t].sum())}
        )
    return pairs


# ---------------------------------------------------------------- plots


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
    ax.plot([r["confidence"] for r in filled], [r["accuracy"] for r in filled], "o-", color="C1", label="(mean confidence, accuracy) per bin")
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
        alternating = [i for pair in zip(wrong, right) for i in pair]
        rest = wrong[len(right):] + right[len(wrong):]
        queues.append(alternating + rest)
    chosen: list[int] = []
    for round_ in range(max((len(q) for q in queues), default=0)):
        chosen += [q[round_] for q in queues if round_ < len(q)]
        if len(chosen) >= n:
            break
    return np.asarray(chosen[:n], dtype=int)


def plot_predictions(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, classes: list[str], n: int, path: Path) -> None:
    """A grid of test images titled predicted (true), mistakes framed in red (see grid_selection)."""
    plt = _pyplot()
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    chosen = grid_selection(labels, predicted, probs.max(axis=1), n)
    cols = int(np.ceil(np.sqrt(max(len(chosen), 1))))
    rows = int(np.ceil(len(chosen) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, chosen):
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
        f"Test predictions: {len(wrong)} of {len(labels)} misclassified overall; in red, each class's most confident mistakes",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the stage


def run(params: Params, paths: Paths) -> dict[str, Any]:
    p: EvaluateParams = params.evaluate
    info = load_info(paths.prepared)
    images, labels = load_split(paths.prepared, "test")
    labels = np.asarray(labels)
    model = load_keras_model(paths.model, info)
    probs = keras_predict(model, images, p.batch_size)
    predicted = probs.argmax(axis=1)
    classes = info.classes

    cm = confusion_matrix(labels, predicted, len(classes))
    scores = per_class_scores(cm)
    ece, bins = calibration(probs, labels, p.calibration_bins)
    metrics = {
        "images": len(labels),
        "accuracy": float((predicted == labels).mean()) if len(labels) else 0.0,
        f"top{TOP_K}_accuracy": top_k_accuracy(probs, labels, TOP_K) if len(labels) else 0.0,
        "loss": log_loss(probs, labels) if len(labels) else 0.0,
        "ece": ece,
        "macro_precision": float(scores["precision"].mean()),
        "macro_recall": float(scores["recall"].mean()),
        "macro_f1": float(scores["f1"].mean()),
    }
    log.info("test metrics: %s", metrics)

    with atomic_dir(paths.reports("evaluate")) as out:
        write_json(out / "metrics.json", metrics)
        _write_csv(
            out / "per_class.csv",
            [
                {"class": c, **{k: round(float(v[i]), 6) if k != "support" else int(v[i]) for k, v in scores.items()}}
                for i, c in enumerate(classes)
            ],
        )
        _write_csv(out / "confused_pairs.csv", most_confused(cm, classes, p.top_confusions), ["true", "predicted", "count", "share_of_true"])
        (out / "plots").mkdir()
        _write_csv(out / "plots" / "confusion.csv", [{"actual": classes[t], "predicted": classes[q]} for t, q in zip(labels, predicted)], ["actual", "predicted"])
        _write_csv(out / "plots" / "calibration.csv", bins)
        write_json(out / "confusion_matrix.json", {"classes": classes, "matrix": cm})
        plot_confusion(cm, classes, out / "confusion_matrix.png")
        plot_reliability(bins, ece, out / "reliability_diagram.png")
        plot_predictions(images, labels, probs, classes, p.grid_images, out / "predictions_grid.png")
    return metrics


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    fields = fields or (list(rows[0]) if rows else [])
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    from stages.cli import run_stage

    run_stage(run)


if __name__ == "__main__":
    main()
