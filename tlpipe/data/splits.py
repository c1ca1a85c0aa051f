"""Deterministic, stratified train/val/test splits of a `RawDataset`.

Validation is carved from train; test comes from the source's own test split when it has one,
else it is carved from train too. Carving is stratified by class and seeded. Exact duplicate
images within a split are dropped before carving, so carving can never put one image on both
sides of a split (the validate stage checks that leakage for real).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from tlpipe.data.dataset import SPLITS
from tlpipe.data.decoding import PoolView
from tlpipe.data.raw import RawDataset, RawSplit
from tlpipe.util.errors import DataError

if TYPE_CHECKING:
    from tlpipe.config.data import DataParams

Split = tuple[RawSplit, list[str]]  # the split and its images' content hashes


def image_hashes(images: np.ndarray | PoolView) -> list[str]:
    """SHA-256 of each image's pixels: equal pixels, equal hash, whatever the file format (images
    decoded into a pool were hashed as they were decoded)."""
    if isinstance(images, PoolView):
        return images.hashes
    return [hashlib.sha256(img.tobytes()).hexdigest() for img in images]


def take(split: RawSplit, hashes: list[str], idx: np.ndarray) -> Split:
    idx = np.sort(idx)
    return RawSplit(split.images[idx], split.labels[idx], [split.origins[i] for i in idx]), [hashes[i] for i in idx]


def drop_duplicates(split: RawSplit, hashes: list[str]) -> tuple[RawSplit, list[str], int]:
    """Keep the first of each set of identical images."""
    seen: set[str] = set()
    keep = [i for i, h in enumerate(hashes) if not (h in seen or seen.add(h))]
    dropped = len(hashes) - len(keep)
    if not dropped:
        return split, hashes, 0
    kept, kept_hashes = take(split, hashes, np.asarray(keep))
    return kept, kept_hashes, dropped


def stratified_sizes(labels: np.ndarray, total: int) -> dict[int, int]:
    """How many of each class a stratified sample of `total` takes (largest remainder)."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * total / counts.sum()
    sizes = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - sizes), kind="stable")[: total - sizes.sum()]:
        sizes[i] += 1
    return {int(c): int(s) for c, s in zip(classes, np.minimum(sizes, counts), strict=True)}


def stratified_pick(labels: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of a seeded, stratified sample of `total` items."""
    picked = []
    for c, size in stratified_sizes(labels, total).items():
        members = np.flatnonzero(labels == c)
        picked.append(rng.permutation(members)[:size])
    return np.sort(np.concatenate(picked)) if picked else np.empty(0, int)


def make_splits(raw: RawDataset, data: DataParams, seed: int) -> tuple[dict[str, Split], dict[str, int]]:
    """train/val/test with their content hashes, and the duplicates dropped per source split."""
    rng = np.random.default_rng(seed)
    dropped: dict[str, int] = {}
    out: dict[str, Split] = {}
    for name, split in raw.splits.items():
        split, hashes, dropped[name] = drop_duplicates(split, image_hashes(split.images))
        out[name] = (split, hashes)

    pool, pool_hashes = out.pop("train")
    n = len(pool.labels)
    fractions = {"val": data.val_fraction, "test": data.test_fraction}
    carve = {s: f for s, f in fractions.items() if s not in out}
    remaining = np.arange(n)
    for s, fraction in carve.items():
        idx = remaining[stratified_pick(pool.labels[remaining], round(n * fraction), rng)]
        out[s] = take(pool, pool_hashes, idx)
        remaining = np.setdiff1d(remaining, idx)
    out["train"] = take(pool, pool_hashes, remaining)

    limits = {s: getattr(data.limit, s) for s in SPLITS}
    for s in SPLITS:
        split, hashes = out[s]
        if limits[s] is not None and limits[s] < len(split.labels):
            out[s] = take(split, hashes, stratified_pick(split.labels, limits[s], rng))
        if len(out[s][0].labels) == 0:
            raise DataError(f"split {s!r} is empty after splitting; check data.{s}_fraction and data.limit.{s}")
    return out, dropped
