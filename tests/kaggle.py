"""Kaggle's CIFAR-10 competition data in miniature, built from the shared CIFAR-10 JPEGs.

Kaggle ships one zip holding `train.7z` (`train/1.png … 50000.png`), `trainLabels.csv`
(`id,label`), `test.7z` (`test/1.png … 300000.png`, unlabeled) and `sampleSubmission.csv`
(`id,label`, every label `cat`). `kaggle_zip` writes the same layout with a few real images.
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import SHARED
from tests.inputs import png_bytes

SHARED_JPEGS = SHARED / "data" / "cifar10-jpeg-train.tar.gz"


def shared_images(per_class: int, skip: int = 0) -> list[tuple[str, np.ndarray]]:
    """(class, pixels) of the shared CIFAR-10 JPEGs: images skip..skip+per_class-1 of each class."""
    if not SHARED_JPEGS.is_file():
        pytest.skip(f"the shared CIFAR-10 images are not at {SHARED_JPEGS}")
    seen: dict[str, int] = {}
    out: list[tuple[str, np.ndarray]] = []
    with tarfile.open(SHARED_JPEGS) as tar:
        for m in tar:
            parts = Path(m.name).parts
            if not m.isfile() or len(parts) < 2:
                continue
            cls = parts[-2]
            k = seen[cls] = seen.get(cls, 0) + 1
            if skip < k <= skip + per_class:
                f = tar.extractfile(m)
                out.append((cls, np.asarray(Image.open(io.BytesIO(f.read() if f else b"")).convert("RGB"))))
    return out


def seven_zip(files: dict[str, bytes], dest: Path) -> Path:
    import py7zr

    with py7zr.SevenZipFile(dest, "w") as archive:
        for name, data in files.items():
            archive.writef(io.BytesIO(data), name)
    return dest


def kaggle_zip(dest: Path, per_class: int = 10, test_images: int = 25, seed: int = 0) -> Path:
    """cifar-10.zip as Kaggle ships it: ids in shuffled class order, PNGs, 7z archives inside a zip."""
    rng = np.random.default_rng(seed)
    train = shared_images(per_class)
    order = rng.permutation(len(train))
    test = shared_images(max(1, -(-test_images // 10)), skip=per_class)[:test_images]
    work = dest.parent
    labels = "id,label\n" + "".join(f"{i + 1},{train[k][0]}\n" for i, k in enumerate(order))
    seven_zip({f"train/{i + 1}.png": png_bytes(train[k][1]) for i, k in enumerate(order)}, work / "train.7z")
    test_order = rng.permutation(len(test))
    seven_zip({f"test/{i + 1}.png": png_bytes(test[k][1]) for i, k in enumerate(test_order)}, work / "test.7z")
    sample = "id,label\n" + "".join(f"{i + 1},cat\n" for i in range(len(test)))
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(work / "test.7z", "test.7z")
        zf.write(work / "train.7z", "train.7z")
        zf.writestr("sampleSubmission.csv", sample)
        zf.writestr("trainLabels.csv", labels)
    return dest
