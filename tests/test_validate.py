"""The validate stage: real great-expectations over prepared data, good and bad."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stages import ingest, validate
from tests.conftest import rewrite_split
from tests.inputs import make_class_tree
from tlpipe.config.params import parse_params
from tlpipe.data.dataset import load_split
from tlpipe.paths import Paths

CLASSES = ["a", "b", "c"]


def ingested(tmp_path: Path, per_class: dict[str, int] | None = None, **data) -> tuple[Paths, object]:
    tree = make_class_tree(tmp_path / "src", CLASSES, per_class or {"train": 20, "test": 5})
    params = parse_params({"seed": 3, "data": {"source": "folder", "path": str(tree), **data}})
    paths = Paths(tmp_path / "project")
    ingest.run(params, paths)
    return paths, params


def test_good_data_passes_and_writes_reports(tmp_path: Path) -> None:
    paths, params = ingested(tmp_path)
    metrics = validate.run(params, paths)
    assert metrics["success"] is True and metrics["failed"] == 0
    assert metrics["images"] == 75
    reports = paths.reports("validate")
    assert json.loads((reports / "metrics.json").read_text()) == metrics
    result = json.loads((reports / "result.json").read_text())
    assert result["images"]["success"] is True
    html = (reports / "data_docs" / "index.html").read_text()
    assert "images" in html and "class_counts" in html


def test_image_shared_between_train_and_test_fails(tmp_path: Path) -> None:
    tree = make_class_tree(tmp_path / "src", CLASSES, {"train": 20, "test": 5})
    # The same picture in both splits, as happens when a dataset is assembled by hand.
    (tree / "test" / "b" / "leak.png").write_bytes((tree / "train" / "b" / "0007.png").read_bytes())
    params = parse_params({"data": {"source": "folder", "path": str(tree), "limit": {"test": 16}}})
    paths = Paths(tmp_path / "project")
    ingest.run(params, paths)
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(params, paths)
    message = str(err.value)
    assert "expectations failed" in message
    assert "splits_sharing_image" in message and "b/leak.png" in message and "train/b/0007.png" in message
    metrics = json.loads((paths.reports("validate") / "metrics.json").read_text())
    assert metrics["success"] is False and metrics["images_shared_between_splits"] == 2
    assert (paths.reports("validate") / "data_docs" / "index.html").exists()


def test_blank_images_duplicates_and_imbalance_fail(tmp_path: Path) -> None:
    paths, params = ingested(tmp_path)
    x, y = load_split(paths.prepared, "train")
    x[0] = 0  # a blank image
    x[2] = x[1]  # a duplicate within train
    keep = ~((y == 2) & (np.arange(len(y)) % 2 == 0))  # class 2 at half strength
    rewrite_split(paths.prepared, "train", x[keep], y[keep])
    (paths.prepared / "manifest.csv").unlink()  # stale now; validate must not depend on it
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(params, paths)
    message = str(err.value)
    assert "expect_column_values_to_be_between(column='pixel_std'" in message
    assert "expect_compound_columns_to_be_unique" in message
    assert "class_counts: expect_column_values_to_be_between(column='relative_deviation'" in message


def test_missing_class_in_a_split_and_label_out_of_range(tmp_path: Path) -> None:
    paths, params = ingested(tmp_path)
    x, y = load_split(paths.prepared, "val")
    y[y == 1] = 7
    rewrite_split(paths.prepared, "val", x, y)
    with pytest.raises(validate.ValidationFailed) as err:
        validate.run(params, paths)
    message = str(err.value)
    assert "expect_column_values_to_be_between(column='label', min_value=0.0, max_value=2.0" in message
    assert "missing ['val:1']" in message
