"""Readers for the ingest stage's sources: the Keras download, a CIFAR-10 python tarball, and
class-folder images (a directory or an archive). Each returns a `RawDataset` of uint8 arrays at
native resolution; nothing here writes to disk, so a bad source loses nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import pickle
import tarfile
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from stages.dataset import CIFAR10_CLASSES, SPLITS, DataError
from stages.params import DataParams

log = logging.getLogger(__name__)

# The published SHA-256 of https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz (as Keras pins it).
CIFAR10_PYTHON_SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val",
    "test": "test", "testing": "test",
}  # fmt: skip


@dataclass
class RawSplit:
    images: np.ndarray  # uint8 N×H×W×3
    labels: np.ndarray  # int64 N
    origins: list[str]  # where each image came from (file or archive member)


@dataclass
class RawDataset:
    classes: list[str]
    splits: dict[str, RawSplit]
    source: dict[str, object] = field(default_factory=dict)


def read_source(data: DataParams) -> RawDataset:
    """Read the source that `data.source` names."""
    if data.image_size is not None and data.source != "folder":
        raise DataError(
            f"data.image_size={data.image_size} applies to data.source 'folder' only; CIFAR-10 "
            f"({data.source!r}) is used at its native 32×32 and the model resizes it (model.image_size)"
        )
    if data.source == "keras":
        return read_keras_cifar10()
    path = Path(data.path or "")
    if not path.exists():
        raise DataError(f"data.path: {path} does not exist (data.source is {data.source!r})")
    if data.source == "cifar_python":
        return read_cifar_python(path, data.sha256 or CIFAR10_PYTHON_SHA256)
    return read_class_folders(path, data.color_mode, data.sha256, data.image_size, data.resize_mode)


# ---------------------------------------------------------------- checksums


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str) -> str:
    actual = sha256_file(path)
    if actual != expected.lower():
        raise DataError(
            f"{path}: SHA-256 checksum mismatch: expected {expected}, got {actual}. "
            "The file is corrupt, truncated or not the one params name (data.sha256)."
        )
    return actual


# ---------------------------------------------------------------- archives


def _safe_member_name(archive: Path, name: str) -> PurePosixPath:
    """Refuse absolute paths and `..` components: such a member could write outside any target."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise DataError(f"{archive}: refusing unsafe archive member {name!r} (absolute path or '..' traversal)")
    return p


def _iter_tar(archive: Path) -> Iterator[tuple[PurePosixPath, bool, bytes | None]]:
    """Yield (member path, is_dir, bytes or None) for every member, refusing unsafe ones."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for m in tar:
                name = _safe_member_name(archive, m.name)
                if m.issym() or m.islnk():
                    raise DataError(f"{archive}: refusing link member {m.name!r} -> {m.linkname!r}")
                if m.isdir():
                    yield name, True, None
                elif m.isfile():
                    f = tar.extractfile(m)
                    yield name, False, f.read() if f else b""
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(f"{archive}: corrupt or truncated archive ({type(err).__name__}: {err})") from None


def _iter_zip(archive: Path) -> Iterator[tuple[PurePosixPath, bool, bytes | None]]:
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                name = _safe_member_name(archive, info.filename)
                yield (name, True, None) if info.is_dir() else (name, False, zf.read(info))
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise DataError(f"{archive}: corrupt or truncated archive ({type(err).__name__}: {err})") from None


def _iter_dir(root: Path) -> Iterator[tuple[PurePosixPath, bool, bytes | None]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        if rel != PurePosixPath("."):
            yield rel, True, None
        for name in sorted(filenames):
            p = Path(dirpath) / name
            try:
                data = p.read_bytes()
            except OSError as err:
                raise DataError(f"{p}: unreadable file ({err.strerror})") from None
            yield (rel / name if rel != PurePosixPath(".") else PurePosixPath(name)), False, data


def iter_entries(path: Path) -> Iterator[tuple[PurePosixPath, bool, bytes | None]]:
    if path.is_dir():
        return _iter_dir(path)
    if zipfile.is_zipfile(path):
        return _iter_zip(path)
    return _iter_tar(path)


# ---------------------------------------------------------------- CIFAR-10 python tarball


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

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def _unpickle(archive: Path, member: str, data: bytes) -> dict:
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any failure here means a malformed batch
        raise DataError(f"{archive}:{member}: not a CIFAR batch pickle ({err})") from None
    if not isinstance(d, dict):
        raise DataError(f"{archive}:{member}: expected a dict, got {type(d).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}


def read_cifar_python(archive: Path, expected_sha256: str) -> RawDataset:
    """cifar-10-python.tar.gz: checksum first (unpickling runs code), then parse in memory."""
    digest = verify_sha256(archive, expected_sha256)
    batches: dict[str, bytes] = {}
    for name, is_dir, data in _iter_tar(archive):
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
        meta = _unpickle(archive, "batches.meta", batches["batches.meta"])
        names = meta.get("label_names")
        if names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    def parse(members: list[str]) -> RawSplit:
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
                    f"{archive}:{m}: label {int(y[bad][0])} out of range 0..{len(classes) - 1} "
                    f"({int(bad.sum())} such labels)"
                )
            xs.append(x)
            ys.append(y)
            origins += [f"{m}#{i}" for i in range(len(y))]
        return RawSplit(np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), origins)

    return RawDataset(
        classes=classes,
        splits={"train": parse(train_names), "test": parse(["test_batch"])},
        source={"kind": "cifar_python", "path": str(archive), "sha256": digest},
    )


def read_keras_cifar10() -> RawDataset:
    """The users' default: Keras downloads and checks the published tarball itself."""
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as err:  # noqa: BLE001 - network failures come in many types
        raise DataError(
            f"data.source 'keras': could not download CIFAR-10 ({type(err).__name__}: {err}). "
            "Without internet, point ingest at a local copy: data.source=cifar_python with "
            "data.path=cifar-10-python.tar.gz, or data.source=folder."
        ) from None
    return RawDataset(
        classes=list(CIFAR10_CLASSES),
        splits={
            "train": RawSplit(x_train, y_train.reshape(-1).astype(np.int64), [f"keras:train#{i}" for i in range(len(x_train))]),
            "test": RawSplit(x_test, y_test.reshape(-1).astype(np.int64), [f"keras:test#{i}" for i in range(len(x_test))]),
        },
        source={"kind": "keras", "path": "keras.datasets.cifar10", "sha256": CIFAR10_PYTHON_SHA256},
    )


# ---------------------------------------------------------------- class folders


def _decode(
    origin: str, data: bytes, color_mode: str, converted: Counter, size: int | None = None, resize_mode: str = "center_crop"
) -> np.ndarray:
    try:
        img = Image.open(io.BytesIO(data))
        if size is not None:
            # JPEG decoders can scale by 1/2..1/8 while decoding: far less work for large photos.
            img.draft("RGB", (size, size))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{origin}: unreadable image ({type(err).__name__}: {err})") from None
    mode = img.mode
    if mode != "RGB":
        if color_mode == "refuse":
            raise DataError(
                f"{origin}: image mode {mode} is not RGB and data.color_mode is 'refuse' "
                "(set it to 'convert' to convert grayscale/RGBA/palette images to RGB)"
            )
        converted[mode] += 1
        # Palette images may carry transparency: go through RGBA so it is dropped, not garbled.
        img = (img.convert("RGBA") if mode == "P" else img).convert("RGB")
    if size is not None and img.size != (size, size):
        img = _resize(img, size, resize_mode)
    return np.asarray(img, dtype=np.uint8)


def _resize(img: Image.Image, size: int, mode: str) -> Image.Image:
    """A size×size image: the middle square after scaling the shorter side (center_crop), or both
    sides scaled (stretch). Antialiased (PIL's reducing filter), so downscaling does not alias."""
    if mode == "stretch":
        return img.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    w, h = img.size
    side = min(w, h)
    box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
    return img.resize((size, size), Image.Resampling.BICUBIC, box=box, reducing_gap=3.0)


def _layout(path: Path, files: list[PurePosixPath], dirs: list[PurePosixPath]) -> tuple[int, bool]:
    """Where the split and class levels are: returns (class level index, has split level)."""
    if not files:
        raise DataError(f"{path}: no images found (expected <split>/<class>/*.png|jpg|jpeg)")
    depths = {len(f.parts) for f in files}
    if len(depths) != 1:
        raise DataError(
            f"{path}: images at mixed depths {sorted(depths)}; expected <split>/<class>/<image> "
            "or <class>/<image> throughout"
        )
    depth = depths.pop()
    if depth < 2:
        raise DataError(f"{path}: images must sit in class folders (<split>/<class>/<image>), found {files[0]}")
    has_split = depth >= 3 and all(f.parts[-3].lower() in SPLIT_ALIASES for f in files)
    return depth - 2, has_split


def read_class_folders(
    path: Path,
    color_mode: str = "convert",
    expected_sha256: str | None = None,
    image_size: int | None = None,
    resize_mode: str = "center_crop",
) -> RawDataset:
    """`<split>/<class>/*.{png,jpg,jpeg}` (or `<class>/*` as one train split), from a dir or archive.

    `image_size`: resize every image to that square as it is decoded (mixed sizes allowed)."""
    digest = None
    if path.is_file():
        digest = verify_sha256(path, expected_sha256) if expected_sha256 else sha256_file(path)
    blobs: dict[PurePosixPath, bytes] = {}
    dirs: list[PurePosixPath] = []
    skipped = 0
    for name, is_dir, data in iter_entries(path):
        if is_dir:
            dirs.append(name)
        elif name.suffix.lower() in IMAGE_SUFFIXES:
            blobs[name] = data or b""
        elif not name.name.startswith("."):
            skipped += 1
    files = sorted(blobs)
    class_level, has_split = _layout(path, files, dirs)

    def split_of(p: PurePosixPath) -> str:
        return SPLIT_ALIASES[p.parts[class_level - 1].lower()] if has_split else "train"

    # Every class folder (including empty ones, which only show up as directories).
    by_split: dict[str, dict[str, list[PurePosixPath]]] = defaultdict(lambda: defaultdict(list))
    for f in files:
        by_split[split_of(f)][f.parts[class_level]].append(f)
    for d in dirs:
        if len(d.parts) == class_level + 1 and (not has_split or d.parts[class_level - 1].lower() in SPLIT_ALIASES):
            by_split[split_of(d / "x")].setdefault(d.parts[class_level], [])
    for split in sorted(by_split, key=list(SPLITS).index):
        for cls, members in sorted(by_split[split].items()):
            if not members:
                raise DataError(f"{path}: class folder {split}/{cls} is empty (no .png/.jpg/.jpeg images)")

    class_sets = {split: set(c) for split, c in by_split.items()}
    all_classes = set().union(*class_sets.values())
    for split, present in class_sets.items():
        missing = all_classes - present
        if missing:
            raise DataError(
                f"{path}: class folder(s) {sorted(missing)} missing from split {split!r} "
                f"(present in {[s for s in class_sets if s != split and missing & class_sets[s]]})"
            )
    classes = list(CIFAR10_CLASSES) if all_classes == set(CIFAR10_CLASSES) else sorted(all_classes)
    index = {c: i for i, c in enumerate(classes)}

    converted: Counter = Counter()
    splits: dict[str, RawSplit] = {}
    expected_shape: tuple[tuple[int, ...], str] | None = None
    for split in SPLITS:
        if split not in by_split:
            continue
        members = [f for c in classes for f in by_split[split][c]]
        images = None
        labels = np.empty(len(members), np.int64)
        origins = []
        for i, f in enumerate(members):
            origin = f"{path}:{f}" if path.is_file() else str(path / f)
            img = _decode(origin, blobs.pop(f), color_mode, converted, image_size, resize_mode)
            if expected_shape is None:
                expected_shape = (img.shape, origin)
            elif img.shape != expected_shape[0]:
                h, w = img.shape[:2]
                raise DataError(
                    f"{origin}: image is {w}x{h}, expected {expected_shape[0][1]}x{expected_shape[0][0]} "
                    f"like {expected_shape[1]}; all images must share one size: set data.image_size "
                    "to resize them as they are read, or resize them first"
                )
            if images is None:
                images = np.empty((len(members), *img.shape), np.uint8)
            images[i] = img
            labels[i] = index[f.parts[class_level]]
            origins.append(str(f))
        splits[split] = RawSplit(images, labels, origins)

    if converted:
        log.warning("converted to RGB: %s", ", ".join(f"{n} {m} image(s)" for m, n in sorted(converted.items())))
    if skipped:
        log.warning("skipped %d non-image file(s) in %s", skipped, path)
    return RawDataset(
        classes=classes,
        splits=splits,
        source={
            "kind": "folder",
            "path": str(path),
            "sha256": digest,
            "converted_to_rgb": dict(converted),
            "resized_to": [image_size, image_size, resize_mode] if image_size else None,
            "skipped_files": skipped,
        },
    )
