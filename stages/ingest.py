"""ingest stage: read the source named in params, split it deterministically, write `data/prepared/`.

Sources (`data.source`): the CIFAR-10 python tarball downloaded by Keras (`keras`) or on disk
(`cifar_python`), class-folder images (`folder`), and images named in a labels file
(`labels_file`, Kaggle's layout: tlpipe.data.labelled). Splits: tlpipe.data.splits. Writes
data/prepared/ (tlpipe.data.dataset's contract: TFRecord shards in a seeded order, streamed
from a pool of decoded images on disk, tlpipe.data.decoding), reports/ingest/metrics.json (counts, duplicates) and
reports/ingest/timings.json.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from stages.cli import run_stage
from tlpipe.config.data import DataParams
from tlpipe.data.dataset import INFO_FILE, MANIFEST_FILE, SPLITS
from tlpipe.data.decoding import decode_threads, read_rows, scratch_dir
from tlpipe.data.raw import RawDataset
from tlpipe.data.records import Records, RecordsWriter
from tlpipe.data.sources import get_source, source_names
from tlpipe.data.splits import make_splits
from tlpipe.paths import Paths
from tlpipe.util.atomic import atomic_dir, write_json
from tlpipe.util.errors import DataError

if TYPE_CHECKING:
    from tlpipe.config.params import Params

log = logging.getLogger(__spec__.name)

WRITE_CHUNK = 256  # images read back and written at a time


def read_source(data: DataParams, paths: Paths) -> RawDataset:
    """Read the source that `data.source` names; the source info records data.path as written."""
    # DVC cannot make a params dependency depend on data.source: dvc.yaml lists the labels_file
    # options for every source, and they are read (so listed == read) whatever the source.
    data.labels.model_dump()  # read whatever the source (dvc.yaml cannot list them per source)
    source = get_source(data.source)
    if data.image_size is not None and not source.image_files:
        raise DataError(
            f"data.image_size={data.image_size} applies to image-file sources "
            f"({', '.join(source_names(lambda s: s.image_files))}) only; {source.about} "
            f"({data.source!r}) is used at its native {source.native_size} and the model resizes it (model.image_size)"
        )
    if source.downloads:
        raw = source.read(data.path, data)
    else:
        path = paths.resolve(data.path)
        if not path.exists():
            raise DataError(f"data.path: {path} does not exist (data.source is {data.source!r})")
        raw = source.read(path, data)
    raw.source = {"kind": raw.source.pop("kind"), "path": data.path, **raw.source}
    return raw


def run(params: Params, paths: Paths) -> dict:
    start = time.perf_counter()
    with scratch_dir(paths.prepared.parent):
        raw = read_source(params.data, paths)
        read_s = time.perf_counter() - start
        splits, dropped = make_splits(raw, params.data, params.seed)
        image_shape = [int(d) for d in splits["train"][0].images.shape[1:]]
        rows = []
        metrics: dict = {"classes": len(raw.classes), "counts": {}, "duplicates_dropped": dropped}
        info = {
            "classes": raw.classes,
            "image_shape": image_shape,
            "counts": {},
            "fingerprints": {},
            "source": raw.source,
            "shards": {},
        }
        with atomic_dir(paths.prepared) as tmp:
            for s in SPLITS:
                split, hashes = splits[s]
                order = stored_order(len(split.labels), params.seed, s)
                records = write_split(tmp, s, split.images, split.labels, order, image_shape)
                info["counts"][s] = metrics["counts"][s] = records.count
                info["fingerprints"][s] = records.fingerprint
                info["shards"][s] = records.describe()
                rows.append(
                    pd.DataFrame(
                        {
                            "split": s,
                            "index": np.arange(len(order)),
                            "label": split.labels[order],
                            "class_name": np.asarray(raw.classes)[split.labels[order]],
                            "sha256": np.asarray(hashes, dtype=object)[order] if len(order) else [],
                            "source": np.asarray(split.origins, dtype=object)[order] if len(order) else [],
                        }
                    )
                )
            pd.concat(rows, ignore_index=True).to_csv(tmp / MANIFEST_FILE, index=False)
            write_json(tmp / INFO_FILE, info)
    write_json(paths.reports("ingest") / "metrics.json", metrics)
    seconds = time.perf_counter() - start
    images = sum(metrics["counts"].values())
    write_json(
        paths.reports("ingest") / "timings.json",
        {
            "read_seconds": round(read_s, 2),
            "seconds": round(seconds, 2),
            "images_per_second": round(images / max(seconds, 1e-9), 1),
            "decode_threads": decode_threads(),
        },
    )
    log.info(
        "ingest: %s classes, %s, %s duplicate(s) dropped, %.1f s",
        len(raw.classes),
        ", ".join(f"{s}={metrics['counts'][s]}" for s in SPLITS),
        sum(dropped.values()),
        seconds,
    )
    return metrics


def stored_order(n: int, seed: int, split: str) -> np.ndarray:
    """The order a split is stored in: seeded, so that a few shards read at once mix the classes
    (the sources list images class by class)."""
    return np.random.default_rng([seed, SPLITS.index(split)]).permutation(n)


def write_split(
    directory: Path, split: str, images: Any, labels: np.ndarray, order: np.ndarray, shape: list[int]
) -> Records:
    """One split's images written as shards in `order`, a chunk at a time (pooled images are read
    back from disk chunk by chunk)."""
    writer = RecordsWriter(directory, split, count=len(order), shape=tuple(shape), dtype="uint8")
    for i in range(0, len(order), WRITE_CHUNK):
        idx = order[i : i + WRITE_CHUNK]
        writer.write(read_rows(images, idx), labels[idx])
    return writer.close()


def main() -> None:
    run_stage(run, DataParams)


if __name__ == "__main__":
    main()
