"""The CIFAR-10 python tarball (cifar-10-python.tar.gz): from disk, or downloaded with Keras.

The checksum is checked before anything is unpickled (unpickling runs code), then the batches
are unpickled in memory by an unpickler that builds numpy arrays and nothing else.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tlpipe.data.archives import iter_entries
from tlpipe.data.dataset import CIFAR10_CLASSES
from tlpipe.data.raw import RawDataset, RawSplit, pinned_sha256, verify_sha256
from tlpipe.util.errors import DataError, first_line

if TYPE_CHECKING:
    from tlpipe.config.data import DataParams

# The published SHA-256 of https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (as Keras pins it).
CIFAR10_PYTHON_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts of bytes, lists and numpy arrays) and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 pickles bytes this way at protocol 2 (the CIFAR files' protocol).
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> type:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _unpickle(archive: Path, member: str, data: bytes) -> dict:
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any failure here means a malformed batch
        raise DataError(f"{archive}:{member}: not a CIFAR batch pickle ({first_line(err)})") from None
    if not isinstance(d, dict):
        raise DataError(f"{archive}:{member}: expected a dict, got {type(d).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def _parse_batches(archive: Path, batches: dict[str, bytes], members: list[str], classes: list[str]) -> RawSplit:
    xs, ys, origins = [], [], []
    for m in members:
        d = _unpickle(archive, m, batches[m])
        try:
            x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            y = np.asarray(d["labels"], dtype=np.int64)
        except (KeyError, ValueError) as err:
            raise DataError(f"{archive}:{m}: malformed CIFAR batch ({err})") from None
        if len(x) != len(y):
            raise DataError(f"{archive}:{m}: {len(x)} images but {len(y)} labels")
        bad = (y < 0) | (y >= len(classes))
        if bad.any():
            raise DataError(
                f"{archive}:{m}: label {int(y[bad][0])} out of range "
                f"0..{len(classes) - 1} ({int(bad.sum())} such labels)"
            )
        xs.append(x)
        ys.append(y)
        origins += [f"{m}#{i}" for i in range(len(y))]
    return RawSplit(np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), origins)


def read_cifar_python(archive: Path, expected_sha256: str | None = None, kind: str = "cifar_python") -> RawDataset:
    """cifar-10-python.tar.gz: checksum first (unpickling runs code), then parse in memory."""
    digest = verify_sha256(archive, expected_sha256 or CIFAR10_PYTHON_SHA256)
    batches: dict[str, bytes] = {}
    for name, is_dir, data in iter_entries(archive):
        if not is_dir and (name.name.startswith(("data_batch_", "test_batch")) or name.name == "batches.meta"):
            batches[name.name] = data or b""
    train_names = sorted(n for n in batches if n.startswith("data_batch_"))
    if not train_names or "test_batch" not in batches:
        raise DataError(
            f"{archive}: not a CIFAR-10 python archive: expected data_batch_1..5 and test_batch, "
            f"found {sorted(batches) or 'none'}"
        )
    classes = list(CIFAR10_CLASSES)
    if "batches.meta" in batches:
        names = _unpickle(archive, "batches.meta", batches["batches.meta"]).get("label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return RawDataset(
        classes=classes,
        splits={
            "train": _parse_batches(archive, batches, train_names, classes),
            "test": _parse_batches(archive, batches, ["test_batch"], classes),
        },
        source={"kind": kind, "sha256": digest},
    )


def download_cifar_python(url: str, expected_sha256: str | None = None) -> Path:
    """The tarball at `url`, downloaded once into Keras's cache (~/.keras/datasets), hash-checked."""
    import keras

    try:
        path = keras.utils.get_file(
            fname="cifar-10-python.tar.gz", origin=url, file_hash=expected_sha256 or CIFAR10_PYTHON_SHA256
        )
    except Exception as err:  # noqa: BLE001 - network failures come in many types
        raise DataError(
            f"data.source 'keras': could not download {url} ({type(err).__name__}: {first_line(err)}). "
            "Without internet, point ingest at a local copy: data.source=cifar_python with "
            "data.path=cifar-10-python.tar.gz, or data.source=folder."
        ) from None
    return Path(path)


def read_file(path: Path, data: DataParams) -> RawDataset:
    """data.source cifar_python: the tarball on disk."""
    return read_cifar_python(path, pinned_sha256(data))


def read_download(url: str, data: DataParams) -> RawDataset:
    """data.source keras: the tarball at data.path (a URL), downloaded by Keras's downloader."""
    expected = pinned_sha256(data)
    return read_cifar_python(download_cifar_python(url, expected), expected, kind="keras")
