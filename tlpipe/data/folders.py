"""Class-folder images: `<split>/<class>/*.{png,jpg,jpeg}` (or `<class>/*` as one train split),
from a directory or an archive. Class names come from folder names, in CIFAR-10's order when
they are CIFAR-10's classes, sorted otherwise.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from tlpipe.data.archives import iter_entries
from tlpipe.data.dataset import CIFAR10_CLASSES, SPLITS
from tlpipe.data.images import decode_image
from tlpipe.data.raw import RawDataset, RawSplit, check_trainable, pinned_sha256, verify_sha256
from tlpipe.util.errors import DataError
from tlpipe.util.hashing import sha256_file

if TYPE_CHECKING:
    from tlpipe.config.data import DataParams

log = logging.getLogger(__spec__.name)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def resized_to(data: DataParams) -> list | None:
    """What the source info records of the resize ingest did (data.image_size), read back by the
    export's metadata and predict: [size, size, resize_mode], or None for native sizes."""
    return [data.image_size, data.image_size, data.resize_mode] if data.image_size else None


def class_order(names: set[str]) -> list[str]:
    """CIFAR-10's own order when the classes are CIFAR-10's, sorted otherwise."""
    return list(CIFAR10_CLASSES) if names == set(CIFAR10_CLASSES) else sorted(names)


def _layout(path: Path, files: list[PurePosixPath]) -> tuple[int, bool]:
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


def read_class_folders(path: Path, data: DataParams) -> RawDataset:
    """Every image of a class-folder tree, decoded (and resized when data.image_size is set)."""
    digest = None
    if path.is_file():
        # Refused before any image is decoded: a wrong archive is never half read.
        digest = verify_sha256(path, pinned) if (pinned := pinned_sha256(data)) else sha256_file(path)
    blobs: dict[PurePosixPath, bytes] = {}
    dirs: list[PurePosixPath] = []
    skipped = 0
    for name, is_dir, blob in iter_entries(path):
        if is_dir:
            dirs.append(name)
        elif name.suffix.lower() in IMAGE_SUFFIXES:
            blobs[name] = blob or b""
        elif not name.name.startswith("."):
            skipped += 1
    files = sorted(blobs)
    class_level, has_split = _layout(path, files)
    by_split = _group(path, files, dirs, class_level, has_split)
    classes = class_order(set().union(*(set(c) for c in by_split.values())))
    index = {c: i for i, c in enumerate(classes)}

    converted: Counter = Counter()
    splits: dict[str, RawSplit] = {}
    first: list[tuple[tuple[int, ...], str]] = []
    for split in (s for s in SPLITS if s in by_split):
        members = [(f, index[f.parts[class_level]]) for c in classes for f in by_split[split][c]]
        splits[split] = decode_split(path, members, blobs, data, converted, first)
    check_trainable(path, classes, splits)
    if converted:
        log.warning("converted to RGB: %s", ", ".join(f"{n} {m} image(s)" for m, n in sorted(converted.items())))
    if skipped:
        log.warning("skipped %d non-image file(s) in %s", skipped, path)
    return RawDataset(
        classes=classes,
        splits=splits,
        source={
            "kind": "folder",
            "sha256": digest,
            "converted_to_rgb": dict(converted),
            "resized_to": resized_to(data),
            "skipped_files": skipped,
        },
    )


def decode_split(
    path: Path,
    members: list[tuple[PurePosixPath, int]],
    blobs: dict[PurePosixPath, bytes],
    data: DataParams,
    converted: Counter,
    first: list[tuple[tuple[int, ...], str]],
) -> RawSplit:
    """The (file, label) members decoded into one split, each blob dropped once decoded.

    Every image must have the shape of the first one decoded (kept in `first`, shared by the
    splits of one source), unless data.image_size resizes them all as they are read.
    """
    images: np.ndarray | None = None
    labels = np.empty(len(members), np.int64)
    for i, (f, label) in enumerate(members):
        origin = f"{path}:{f}" if path.is_file() else str(path / f)
        img = decode_image(
            origin,
            blobs.pop(f),
            color_mode=data.color_mode,
            size=data.image_size,
            resize_mode=data.resize_mode,
            converted=converted,
        )
        if not first:
            first.append((img.shape, origin))
        elif img.shape != first[0][0]:
            h, w = img.shape[:2]
            raise DataError(
                f"{origin}: image is {w}x{h}, expected {first[0][0][1]}x{first[0][0][0]} like {first[0][1]}; "
                "all images must share one size: set data.image_size to resize them as they are read "
                "(photos: `python -m stages.presets photos`), or resize them first"
            )
        if images is None:
            images = np.empty((len(members), *img.shape), np.uint8)
        images[i] = img
        labels[i] = label
    return RawSplit(images, labels, [str(f) for f, _ in members])


def _group(
    path: Path, files: list[PurePosixPath], dirs: list[PurePosixPath], class_level: int, has_split: bool
) -> dict[str, dict[str, list[PurePosixPath]]]:
    """split → class → files, every class folder included (empty ones only show up as directories)."""

    def split_of(p: PurePosixPath) -> str:
        return SPLIT_ALIASES[p.parts[class_level - 1].lower()] if has_split else "train"

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
    return by_split
