"""Content hashes: of files (checksums, lineage) and of prepared splits (cache keys)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

_CHUNK = 1 << 20


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, read in chunks. md5 is what DVC records for a file."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def md5_file(path: str | Path) -> str:
    return file_digest(path, "md5")


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """A content hash of one split (pixels and labels), for cache keys and lineage.

    Hashed in chunks, so a memory-mapped split is never copied whole.
    """
    h = hashlib.sha256()
    h.update(str(images.shape).encode())
    step = 4096
    for i in range(0, len(images), step):
        h.update(np.ascontiguousarray(images[i : i + step]).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()
