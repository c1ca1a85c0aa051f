"""Evaluate stage: metric arithmetic on hand-checked arrays, then the stage on a tiny real model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from stages import evaluate
from tests.tiny_models import CLASSES, tiny_params, tiny_project
from tlpipe.evaluation import metrics as evaluate_metrics
from tlpipe.evaluation import plots as evaluate_plots
from tlpipe.paths import Paths
from tlpipe.util.errors import ModelError


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tiny_project(tmp_path_factory)


def test_confusion_and_per_class_scores() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 0, 0])
    cm = evaluate_metrics.confusion_matrix(labels, predicted, 3)
    assert cm.tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 0]]
    s = evaluate_metrics.per_class_scores(cm)
    assert s["precision"] == pytest.approx([2 / 4, 1 / 2, 0.0])  # class 2 never predicted: 0, not NaN
    assert s["recall"] == pytest.approx([2 / 3, 1 / 2, 0.0])
    assert s["f1"][0] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert s["support"].tolist() == [3, 2, 1]
    pairs = evaluate_metrics.most_confused(cm, ["a", "b", "c"], 5)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [("a", "b", 1), ("b", "a", 1), ("c", "a", 1)]
    assert pairs[2]["share_of_true"] == 1.0


def test_top_k_loss_and_calibration() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.05, 0.05, 0.9]])
    labels = np.array([0, 1, 1, 2])
    assert evaluate_metrics.top_k_accuracy(probs, labels, 1) == 0.5
    assert evaluate_metrics.top_k_accuracy(probs, labels, 2) == 1.0
    assert evaluate_metrics.top_k_accuracy(probs, labels, 5) == 1.0  # k larger than the classes: all of them
    assert evaluate_metrics.log_loss(probs, labels) == pytest.approx(-np.mean(np.log([0.7, 0.3, 0.4, 0.9])))
    ece, table = evaluate_metrics.calibration(probs, labels, bins=2)
    # bin (0, .5]: conf .5 wrong -> |0 - .5|; bin (.5, 1]: conf .7 .6 .9, right, wrong, right.
    expected = 1 / 4 * 0.5 + 3 / 4 * abs(2 / 3 - (0.7 + 0.6 + 0.9) / 3)
    assert ece == pytest.approx(expected)
    assert [r["count"] for r in table] == [1, 3]
    perfect = np.eye(3)[[0, 1, 2]]
    assert evaluate_metrics.calibration(perfect, np.array([0, 1, 2]), 10)[0] == pytest.approx(0.0)


def test_prediction_grid_shows_every_class_its_worst_mistakes_and_correct_ones() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    predicted = np.array([1, 2, 0, 1, 1, 0, 2, 2])
    confidence = np.array([0.6, 0.9, 0.8, 0.7, 0.5, 0.4, 0.9, 0.3])
    # Round 1: each class's first entry (class 0: its most confident mistake, index 1);
    # round 2: a correct one, then the remaining mistakes and correct ones.
    assert evaluate_plots.grid_selection(labels, predicted, confidence, 6).tolist() == [1, 5, 6, 2, 3, 7]
    assert evaluate_plots.grid_selection(labels, predicted, confidence, 100).tolist() == [1, 5, 6, 2, 3, 7, 0, 4]
    assert evaluate_plots.grid_selection(labels, predicted, confidence, 0).tolist() == []


def test_evaluate_stage_reports(project: Path) -> None:
    paths = Paths(project)
    metrics = evaluate.run(tiny_params(), paths)
    out = paths.reports("evaluate")
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["images"] == 24
    assert set(metrics) >= {"accuracy", "top5_accuracy", "loss", "ece", "macro_f1"}
    # The same test split through the float32 ONNX model gave the same accuracy (parity).
    exported = json.loads((paths.reports("export") / "metrics.json").read_text())
    assert metrics["accuracy"] == pytest.approx(exported["variants"]["fp32"]["accuracy"])
    assert metrics["top5_accuracy"] == 1.0  # 3 classes

    with (out / "per_class.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == CLASSES and all(r["support"] == "8" for r in rows)
    assert np.mean([float(r["f1"]) for r in rows]) == pytest.approx(metrics["macro_f1"], abs=1e-5)
    with (out / "plots" / "confusion.csv").open() as f:
        conf = list(csv.DictReader(f))
    assert len(conf) == 24 and set(conf[0]) == {"actual", "predicted"}
    correct = sum(r["actual"] == r["predicted"] for r in conf)
    assert correct / 24 == pytest.approx(metrics["accuracy"])
    with (out / "plots" / "calibration.csv").open() as f:
        assert sum(int(r["count"]) for r in csv.DictReader(f)) == 24
    for png in ("confusion_matrix.png", "reliability_diagram.png", "predictions_grid.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_rejects_logits_and_missing_model(project: Path, prepared_dir: Path) -> None:
    with pytest.raises(ModelError, match="run the finetune stage first"):
        evaluate.run(tiny_params(), Paths(prepared_dir))
    from tlpipe.model.keras_io import check_probabilities

    with pytest.raises(ModelError, match="not class probabilities"):
        check_probabilities(np.array([[2.0, -1.0, 0.5]]), "m")
