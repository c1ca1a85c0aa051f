"""Small inputs in the real formats: CIFAR python tarballs and class-folder trees of PNG/JPEG."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import synthetic_images


def cifar_batch(images: np.ndarray, labels: list[int], name: str) -> bytes:
    """A batch in the real layout: dict of bytes keys, data as N×3072 uint8 (channel-major)."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    d = {b"batch_label": name.encode(), b"labels": list(labels), b"data": data, b"filenames": [b"x.png"] * len(labels)}
    return pickle.dumps(d, protocol=2)


def make_cifar_tarball(
    path: Path, per_batch: int = 40, test: int = 50, seed: int = 0, bad_label: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """cifar-10-python.tar.gz with 5 training batches and a test batch; returns the train arrays."""
    rng = np.random.default_rng(seed)
    members: dict[str, bytes] = {}
    xs, ys = [], []
    for b in range(1, 6):
        y = np.tile(np.arange(10), per_batch // 10 + 1)[:per_batch]
        rng.shuffle(y)
        x = synthetic_images(per_batch, 32, y, seed=seed + b)
        if bad_label and b == 3:
            y = y.copy()
            y[0] = 10
        members[f"cifar-10-batches-py/data_batch_{b}"] = cifar_batch(x, y.tolist(), f"training batch {b}")
        xs.append(x)
        ys.append(y)
    yt = np.tile(np.arange(10), test // 10)
    members["cifar-10-batches-py/test_batch"] = cifar_batch(
        synthetic_images(len(yt), 32, yt, seed=seed + 99), yt.tolist(), "test"
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    members["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": [n.encode() for n in names]}, protocol=2
    )
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return np.concatenate(xs), np.concatenate(ys)


def save_image(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if mode:
        img = img.convert(mode)
    img.save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else img.save(path)


def make_class_tree(
    root: Path,
    classes: list[str],
    per_class: dict[str, int],
    size: int = 16,
    seed: int = 0,
    fmt: str = "png",
) -> Path:
    """`<split>/<class>/NNNN.<fmt>` images, learnable per class, distinct from each other."""
    for k, (split, n) in enumerate(per_class.items()):
        for c, cls in enumerate(classes):
            imgs = synthetic_images(n, size, np.full(n, c), seed=seed + 1000 * k + c)
            for i, img in enumerate(imgs):
                save_image(root / split / cls / f"{i:04d}.{fmt}", img)
    return root


def tar_tree(root: Path, archive: Path) -> Path:
    """A .tar.gz of `root`'s contents whose bytes depend on the files alone (no times, owners)."""

    def normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        return info

    with open(archive, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            for p in sorted(root.iterdir()):
                tar.add(p, arcname=p.name, filter=normalise)
    return archive


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _with_png_size(png: bytes, width: int, height: int) -> bytes:
    """The PNG with its header (IHDR) claiming another size, its checksum fixed so that only the size lies."""
    import struct
    import zlib

    ihdr = png[12:16] + struct.pack(">II", width, height) + png[24:29]
    return png[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]


def bad_image(kind: str, size: int = 16) -> bytes:
    """An image file a decoder must refuse cleanly:
    huge: a valid header claiming 100,000 × 100,000 pixels (a decompression bomb's first bytes);
    truncated: a PNG cut in the middle of its pixel data;
    lying: a header claiming 64 × 64 over 16 × 16 pixels of data;
    animated: a two-frame (APNG) file;
    garbage: no image at all."""
    img = synthetic_images(2, size, np.array([0, 1]), seed=5)
    png = png_bytes(img[0])
    if kind == "huge":
        return _with_png_size(png, 100_000, 100_000)
    if kind == "truncated":
        return png[: len(png) // 2]
    if kind == "lying":
        return _with_png_size(png, 4 * size, 4 * size)
    if kind == "animated":
        buf = io.BytesIO()
        Image.fromarray(img[0]).save(buf, format="PNG", save_all=True, append_images=[Image.fromarray(img[1])])
        return buf.getvalue()
    if kind == "garbage":
        return b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    raise ValueError(kind)


BAD_IMAGES = {
    "huge": r"image header claims .*pixels",
    "truncated": r"unreadable image",
    "lying": r"unreadable image",
    "animated": r"image has 2 frames",
    "garbage": r"unreadable image",
}
