"""evaluate stage: the fine-tuned Keras model on the test split.

Writes reports/evaluate/:
- metrics.json: accuracy, top-5 accuracy, loss, expected calibration error, macro P/R/F1
  (`dvc metrics show`, `dvc exp show`);
- per_class.csv: precision, recall, F1 and support per class;
- confused_pairs.csv: the most frequent (true, predicted) mistakes;
- plots/confusion.csv (one row per image, for `dvc plots`' confusion template) and
  plots/calibration.csv (reliability diagram data);
- confusion_matrix.png, reliability_diagram.png, predictions_grid.png.
Scores: tlpipe.evaluation.metrics; pictures: tlpipe.evaluation.plots.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.cli import run_stage
from tlpipe.config.evaluate import EvaluateParams
from tlpipe.data.dataset import load_info, split_records
from tlpipe.evaluation.metrics import (
    TOP_K,
    calibration,
    confusion_matrix,
    log_loss,
    most_confused,
    per_class_scores,
    top_k_accuracy,
)
from tlpipe.evaluation.plots import grid_selection, plot_confusion, plot_predictions, plot_reliability
from tlpipe.model.keras_io import keras_predict_records, load_keras_model
from tlpipe.model.tta import with_tta
from tlpipe.paths import Paths
from tlpipe.util.atomic import atomic_dir, write_json

if TYPE_CHECKING:
    from tlpipe.config.params import Params

log = logging.getLogger(__spec__.name)


def run(params: Params, paths: Paths) -> dict[str, Any]:
    p = params.evaluate
    batch_size, bins, top_confusions, grid_images = p.batch_size, p.calibration_bins, p.top_confusions, p.grid_images
    info = load_info(paths.prepared)
    test = split_records(paths.prepared, "test", info)
    model = with_tta(load_keras_model(paths.model, info), params.tta)
    probs, labels = keras_predict_records(model, test, batch_size)
    predicted = probs.argmax(axis=1)
    classes = info.classes

    cm = confusion_matrix(labels, predicted, len(classes))
    scores = per_class_scores(cm)
    ece, table = calibration(probs, labels, bins)
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
        per_class = [
            {"class": c, **{k: int(v[i]) if k == "support" else round(float(v[i]), 6) for k, v in scores.items()}}
            for i, c in enumerate(classes)
        ]
        write_csv(out / "per_class.csv", per_class)
        pairs = most_confused(cm, classes, top_confusions)
        write_csv(out / "confused_pairs.csv", pairs, ["true", "predicted", "count", "share_of_true"])
        (out / "plots").mkdir()
        confusion_rows = [
            {"actual": classes[t], "predicted": classes[q]} for t, q in zip(labels, predicted, strict=True)
        ]
        write_csv(out / "plots" / "confusion.csv", confusion_rows, ["actual", "predicted"])
        write_csv(out / "plots" / "calibration.csv", table)
        write_json(out / "confusion_matrix.json", {"classes": classes, "matrix": cm})
        plot_confusion(cm, classes, out / "confusion_matrix.png")
        plot_reliability(table, ece, out / "reliability_diagram.png")
        chosen = grid_selection(labels, predicted, probs.max(axis=1), grid_images)
        shown = dict(zip(chosen, test.gather(chosen)[0], strict=True))  # the few images shown, read back
        plot_predictions(shown, labels, probs, classes, chosen, out / "predictions_grid.png")
    return metrics


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str] | None = None) -> None:
    fields = fields or (list(rows[0]) if rows else [])
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    run_stage(run, EvaluateParams)


if __name__ == "__main__":
    main()
