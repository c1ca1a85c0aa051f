"""What every source reader returns: a `RawDataset` of uint8 arrays at native resolution, and the
checks readers share (checksum first, a trainable set of classes).

The readers are the modules behind the registry in tlpipe.data.sources. Nothing here writes to
disk, so a bad source loses nothing.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlpipe.data.decoding import PoolView
from tlpipe.paths import Paths
from tlpipe.util.errors import DataError
from tlpipe.util.hashing import sha256_file

if TYPE_CHECKING:
    from tlpipe.config.data import DataParams

log = logging.getLogger(__spec__.name)


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


def pinned_sha256(data: DataParams) -> str | None:
    """The SHA-256 that data.sha256 pins data.path to, or None when no pin holds for it.

    A pin belongs to the path it was taken of (data.sha256_path): it holds while data.path names
    that path (`./x/../y` is `y`; relative paths resolved from the project root, as the stages
    resolve data.path), or for any data.path when sha256_path is empty. Another data.path has no
    pin, so params.yaml's pin of the CIFAR-10 tarball never stops `-S data.path=/path/to/photos`;
    DVC still reruns ingest on changed data.
    """
    expected, pinned, path = data.sha256, data.sha256_path, data.path
    if not expected:
        return None
    if pinned is None or _same_path(pinned, path or ""):
        return expected
    log.info("data.sha256 pins %s, not data.path %s: no checksum to check", pinned, path)
    return None


def _same_path(a: str, b: str) -> bool:
    """The same URL, or the same local path: as written (normalised), or once resolved from the
    project root the way the stages resolve data.path (tlpipe.paths.Paths.resolve: so an absolute
    data.path, as flows.compare writes for an experiment's copy, keeps a relative pin of it)."""
    if a.startswith(("http://", "https://")) or b.startswith(("http://", "https://")):
        return a == b
    if os.path.normpath(os.path.expanduser(a)) == os.path.normpath(os.path.expanduser(b)):
        return True
    return Paths().resolve(a).resolve() == Paths().resolve(b).resolve()


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
