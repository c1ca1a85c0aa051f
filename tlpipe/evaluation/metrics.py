"""The evaluate stage's scores, in plain numpy: confusion matrix, per-class precision/recall/F1,
top-k accuracy, log loss, expected calibration error, most-confused pairs."""

from __future__ import annotations

from typing import Any

import numpy as np

TOP_K = 5
_EPS = 1e-7  # probabilities are clipped here in the loss, as Keras' cross-entropy does


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
        table.append(
            {
                "bin": b,
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "confidence": conf,
                "accuracy": acc,
                "count": n,
            }
        )
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
            {
                "true": classes[t],
                "predicted": classes[p],
                "count": int(off[t, p]),
                "share_of_true": float(off[t, p] / cm[t].sum()),
            }
        )
    return pairs
