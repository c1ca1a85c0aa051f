"""What the two training stages (train, finetune) share: their data, targets and config report."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np

from tlpipe.data.dataset import DatasetInfo, load_info, split_records
from tlpipe.data.records import Records
from tlpipe.model.classifier import ModelSpec
from tlpipe.paths import Paths
from tlpipe.util.errors import DataError

if TYPE_CHECKING:
    from tlpipe.config.params import Params


def load_training_data(paths: Paths) -> tuple[DatasetInfo, Records, Records]:
    """dataset.json and the train and val splits' shards; empty splits are an error."""
    info = load_info(paths.prepared)
    train = split_records(paths.prepared, "train", info)
    val = split_records(paths.prepared, "val", info)
    if train.count == 0 or val.count == 0:
        raise DataError(f"{paths.prepared}: the train and val splits must not be empty ({train.count}, {val.count})")
    return info, train, val


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels, np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels outside 0..{num_classes - 1}: min {labels.min()}, max {labels.max()}")
    return np.eye(num_classes, dtype=np.float32)[labels]


def config_json(spec: ModelSpec, runtime: dict[str, Any], params: Params) -> str:
    """reports/<stage>/config.json: what the params resolved to (no machine facts)."""
    model = {**spec.describe(), "weights_id": spec.weights_id, "num_classes": spec.num_classes}
    return json.dumps({"model": model, "runtime": runtime, "seed": params.seed}, indent=2) + "\n"
