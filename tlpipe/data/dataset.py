"""The prepared-data contract between ingest and every later stage.

`data/prepared/` holds, per split in SPLITS, TFRecord shards `<split>-NNNNN-of-MMMMM.tfrecord`
of (uint8 H×W×3 RGB image, int64 label) records (tlpipe.data.records), in a seeded shuffled
order, so that streaming a few shards at a time already mixes the classes; `dataset.json` (class
names, image shape, per-split counts and content fingerprints, source, and the shard index) and
`manifest.csv` (one row per image, in stored order).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlpipe.data.records import Records
from tlpipe.util.errors import DataError

SPLITS = ("train", "val", "test")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
INFO_FILE = "dataset.json"
MANIFEST_FILE = "manifest.csv"


@dataclass(frozen=True)
class DatasetInfo:
    classes: list[str]
    image_shape: tuple[int, int, int]
    counts: dict[str, int]
    fingerprints: dict[str, str]
    source: dict[str, Any]
    shards: dict[str, dict[str, Any]]

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def load_info(prepared: str | Path) -> DatasetInfo:
    path = Path(prepared) / INFO_FILE
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run the ingest stage first (dvc repro ingest)") from None
    return DatasetInfo(
        classes=list(raw["classes"]),
        image_shape=tuple(raw["image_shape"]),
        counts=dict(raw["counts"]),
        fingerprints=dict(raw["fingerprints"]),
        source=dict(raw.get("source", {})),
        shards=dict(raw.get("shards", {})),
    )


def split_records(prepared: str | Path, split: str, info: DatasetInfo | None = None) -> Records:
    """The shards of one split, checked against the index in dataset.json."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    info = info or load_info(prepared)
    entry = info.shards.get(split)
    if entry is None:
        raise DataError(
            f"{Path(prepared) / INFO_FILE}: no shard index for split {split!r}; "
            "rerun the ingest stage (dvc repro ingest)"
        )
    records = Records.from_index(prepared, entry)
    if records.dtype != "uint8" or len(records.shape) != 3 or records.shape[-1] != 3:
        raise DataError(
            f"{prepared}: split {split!r} holds {records.dtype} {records.shape} records, expected uint8 H×W×3"
        )
    return records


def load_split(prepared: str | Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 N×H×W×3) and labels (int64 N) of one split, all in memory (small data, tests)."""
    return split_records(prepared, split).load()
