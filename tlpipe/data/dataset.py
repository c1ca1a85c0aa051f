"""The prepared-data contract between ingest and every later stage.

`data/prepared/` holds, per split in SPLITS, `<split>_images.npy` (uint8, N×H×W×3, RGB, native
resolution) and `<split>_labels.npy` (int64, N), plus `dataset.json` (class names, image shape,
per-split counts and content fingerprints, source) and `manifest.csv` (one row per image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def images_file(prepared: Path, split: str) -> Path:
    return prepared / f"{split}_images.npy"


def labels_file(prepared: Path, split: str) -> Path:
    return prepared / f"{split}_labels.npy"


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
    )


def load_split(prepared: str | Path, split: str, mmap: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8 N×H×W×3) and labels (int64 N) of one split; memory-mapped by default."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    prepared = Path(prepared)
    mode = "r" if mmap else None
    try:
        x = np.load(images_file(prepared, split), mmap_mode=mode, allow_pickle=False)
        y = np.load(labels_file(prepared, split), mmap_mode=mode, allow_pickle=False)
    except FileNotFoundError as err:
        raise DataError(f"{err.filename}: not found; run the ingest stage first (dvc repro ingest)") from None
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y):
        raise DataError(
            f"{images_file(prepared, split)}: expected uint8 N×H×W×3 images matching {len(y)} labels, "
            f"got {x.dtype} {x.shape}"
        )
    return x, y
