"""Class-folder images: `<split>/<class>/*.<image suffix>` (or `<class>/*` as one train split),
from a directory or an archive. Class names come from folder names, in CIFAR-10's order when
they are CIFAR-10's classes, sorted otherwise.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np

from tlpipe.data.archives import iter_entries
from tlpipe.data.dataset import CIFAR10_CLASSES, SPLITS
from tlpipe.data.decoding import decode_all
from tlpipe.data.images import IMAGE_SUFFIXES, decode_image
from tlpipe.data.raw import RawDataset, RawSplit, check_trainable, pinned_sha256, verify_sha256
from tlpipe.util.errors import DataError
from tlpipe.util.hashing import sha256_file

if TYPE_CHECKING:
    from tlpipe.config.data import DataParams

log = logging.getLogger(__spec__.name)

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
        raise DataError(f"{path}: no images found (expected <split>/<class>/*{'|'.join(IMAGE_SUFFIXES)})")
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
    # First the names (nothing read), so that a bad layout is refused before any decoding.
    names: list[PurePosixPath] = []
    dirs: list[PurePosixPath] = []
    skipped = 0

    def listed(name: PurePosixPath) -> bool:
        nonlocal skipped
        if name.suffix.lower() in IMAGE_SUFFIXES:
            names.append(name)
        elif not name.name.startswith("."):
            skipped += 1
        return False

    for name, is_dir, _ in iter_entries(path, listed):
        if is_dir:
            dirs.append(name)
    files = sorted(names)
    class_level, has_split = _layout(path, files)
    by_split = _group(path, files, dirs, class_level, has_split)
    classes = class_order(set().union(*(set(c) for c in by_split.values())))
    index = {c: i for i, c in enumerate(classes)}

    converted: Counter = Counter()
    members = {
        split: [(f, index[f.parts[class_level]]) for c in classes for f in by_split[split][c]]
        for split in SPLITS
        if split in by_split
    }
    splits = decode_splits(path, members, data, converted)
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


def origin_of(path: Path, member: PurePosixPath) -> str:
    return f"{path}:{member}" if path.is_file() else str(path / member)


def decode_splits(
    path: Path,
    members: dict[str, list[tuple[PurePosixPath, int]]],
    data: DataParams,
    converted: Counter,
    keep: Callable[[PurePosixPath], bool] | None = None,
    nested: bool = False,
) -> dict[str, RawSplit]:
    """Every split's (file, label) members decoded (tlpipe.data.decoding), read in the source's
    own order in one pass, each split's images in its members' order.

    Every image must have the shape of the first one decoded, unless data.image_size resizes them
    all as they are read. `keep`/`nested`: how iter_entries reads the source (the member set by default).
    """
    wanted = {f for split in members.values() for f, _ in split}

    def decode(origin: str, blob: bytes, counts: Counter) -> np.ndarray:
        return decode_image(
            origin,
            blob,
            color_mode=data.color_mode,
            size=data.image_size,
            resize_mode=data.resize_mode,
            converted=counts,
        )

    entries = (
        (origin_of(path, name), blob or b"")
        for name, is_dir, blob in iter_entries(path, keep or wanted.__contains__, nested=nested)
        if not is_dir and name in wanted
    )
    pool, rows = decode_all(entries, decode, converted)
    splits = {}
    for split, pairs in members.items():
        origins = [origin_of(path, f) for f, _ in pairs]
        missing = next((o for o in origins if o not in rows), None)
        if missing is not None:
            raise DataError(f"{missing}: listed but not read back from the source (changed while ingest ran?)")
        labels = np.asarray([label for _, label in pairs], np.int64)
        splits[split] = RawSplit(pool.view([rows[o] for o in origins]), labels, [str(f) for f, _ in pairs])
    return splits


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
                raise DataError(f"{path}: class folder {split}/{cls} is empty (no {'/'.join(IMAGE_SUFFIXES)} images)")
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
