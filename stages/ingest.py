"""ingest: read the source named in params, split it deterministically, write `data/prepared/`.

Validation is carved from train; test comes from the source's own test split when it has one,
else it is carved from train too. Carving is stratified by class and seeded by `seed`. Exact
duplicate images within the pool are dropped before carving, so carving can never put one
image on both sides of a split (the validate stage checks that leakage for real).
"""

from __future__ import annotations

import hashlib
import logging
import time

import numpy as np
import pandas as pd

from stages.atomic import atomic_dir, write_json
from stages.dataset import (
    INFO_FILE,
    MANIFEST_FILE,
    SPLITS,
    DataError,
    fingerprint,
    images_file,
    labels_file,
)
from stages.cli import run_stage
from stages.params import Params
from stages.paths import Paths
from stages.sources import RawDataset, RawSplit, read_source

log = logging.getLogger("stages.ingest")


def image_hashes(images: np.ndarray) -> list[str]:
    """SHA-256 of each image's pixels: equal pixels, equal hash, whatever the file format."""
    return [hashlib.sha256(img.tobytes()).hexdigest() for img in images]


def _take(split: RawSplit, hashes: list[str], idx: np.ndarray) -> tuple[RawSplit, list[str]]:
    idx = np.sort(idx)
    return RawSplit(split.images[idx], split.labels[idx], [split.origins[i] for i in idx]), [hashes[i] for i in idx]


def drop_duplicates(split: RawSplit, hashes: list[str]) -> tuple[RawSplit, list[str], int]:
    """Keep the first of each set of identical images."""
    seen: set[str] = set()
    keep = [i for i, h in enumerate(hashes) if not (h in seen or seen.add(h))]
    dropped = len(hashes) - len(keep)
    if not dropped:
        return split, hashes, 0
    kept, kept_hashes = _take(split, hashes, np.asarray(keep))
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


def make_splits(raw: RawDataset, params: Params) -> tuple[dict[str, tuple[RawSplit, list[str]]], dict[str, int]]:
    data = params.data
    rng = np.random.default_rng(params.seed)
    dropped: dict[str, int] = {}
    out: dict[str, tuple[RawSplit, list[str]]] = {}
    for name, split in raw.splits.items():
        split, hashes, dropped[name] = drop_duplicates(split, image_hashes(split.images))
        out[name] = (split, hashes)

    pool, pool_hashes = out.pop("train")
    n = len(pool.labels)
    carve = {s: getattr(data, f"{s}_fraction") for s in ("val", "test") if s not in out}
    remaining = np.arange(n)
    for s, fraction in carve.items():
        idx = remaining[stratified_pick(pool.labels[remaining], round(n * fraction), rng)]
        out[s] = _take(pool, pool_hashes, idx)
        remaining = np.setdiff1d(remaining, idx)
    out["train"] = _take(pool, pool_hashes, remaining)

    for s in SPLITS:
        limit = getattr(data.limit, s)
        split, hashes = out[s]
        if limit is not None and limit < len(split.labels):
            out[s] = _take(split, hashes, stratified_pick(split.labels, limit, rng))
        if len(out[s][0].labels) == 0:
            raise DataError(f"split {s!r} is empty after splitting; check data.{s}_fraction and data.limit.{s}")
    return out, dropped


def run(params: Params, paths: Paths) -> dict:
    start = time.perf_counter()
    raw = read_source(params.data)
    read_s = time.perf_counter() - start
    splits, dropped = make_splits(raw, params)

    rows = []
    metrics: dict = {"classes": len(raw.classes), "counts": {}, "duplicates_dropped": dropped}
    info = {
        "classes": raw.classes,
        "image_shape": list(splits["train"][0].images.shape[1:]),
        "counts": {},
        "fingerprints": {},
        "source": raw.source,
    }
    with atomic_dir(paths.prepared) as tmp:
        for s in SPLITS:
            split, hashes = splits[s]
            np.save(images_file(tmp, s), split.images)
            np.save(labels_file(tmp, s), split.labels)
            info["counts"][s] = metrics["counts"][s] = len(split.labels)
            info["fingerprints"][s] = fingerprint(split.images, split.labels)
            rows.append(
                pd.DataFrame(
                    {
                        "split": s,
                        "index": np.arange(len(split.labels)),
                        "label": split.labels,
                        "class_name": np.asarray(raw.classes)[split.labels],
                        "sha256": hashes,
                        "source": split.origins,
                    }
                )
            )
        pd.concat(rows, ignore_index=True).to_csv(tmp / MANIFEST_FILE, index=False)
        write_json(tmp / INFO_FILE, info)
    metrics["read_seconds"] = round(read_s, 2)
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    write_json(paths.reports("ingest") / "metrics.json", metrics)
    log.info(
        "ingest: %s classes, %s, %s duplicate(s) dropped, %.1f s",
        len(raw.classes),
        ", ".join(f"{s}={metrics['counts'][s]}" for s in SPLITS),
        sum(dropped.values()),
        metrics["seconds"],
    )
    return metrics


def main() -> None:
    run_stage(run)


if __name__ == "__main__":
    main()
