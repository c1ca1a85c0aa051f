"""What every source reader returns: a `RawDataset` of uint8 arrays at native resolution, and the
checks readers share (checksum first, a trainable set of classes).

The readers are the modules behind the registry in tlpipe.data.sources. Nothing here writes to
disk, so a bad source loses nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlpipe.data.decoding import PoolView
from tlpipe.util.errors import DataError
from tlpipe.util.hashing import sha256_file


@dataclass
class RawSplit:
    images: np.ndarray | PoolView  # uint8 N×H×W×3, in memory or decoded into a pool on disk
    labels: np.ndarray  # int64 N
    origins: list[str]  # where each image came from (file or archive member)


@dataclass
class RawDataset:
    classes: list[str]
    splits: dict[str, RawSplit]
    source: dict[str, object] = field(default_factory=dict)


def verify_sha256(path: Path, expected: str) -> str:
    """The file's SHA-256, which must be `expected`: checked before anything in it is parsed."""
    actual = sha256_file(path)
    if actual != expected.lower():
        raise DataError(
            f"{path}: SHA-256 checksum mismatch: expected {expected}, got {actual}. "
            "The file is corrupt, truncated or not the one params name (data.sha256)."
        )
    return actual


def check_trainable(path: str | Path, classes: list[str], splits: dict[str, RawSplit]) -> None:
    """A classifier needs two classes at least, each with training images."""
    if len(classes) < 2:
        raise DataError(
            f"{path}: {len(classes)} class ({', '.join(classes) or 'none'}); a classifier needs at least two"
        )
    train = splits.get("train")
    present = set(np.unique(train.labels).tolist()) if train is not None else set()
    missing = [c for i, c in enumerate(classes) if i not in present]
    if missing:
        raise DataError(f"{path}: class(es) {missing} have no training images; every class needs some to be learned")
