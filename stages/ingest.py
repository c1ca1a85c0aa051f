"""ingest stage: read the source named in params, split it deterministically, write `data/prepared/`.

Sources (`data.source`): the CIFAR-10 python tarball downloaded by Keras (`keras`) or on disk
(`cifar_python`), class-folder images (`folder`), and images named in a labels file
(`labels_file`, Kaggle's layout: tlpipe.data.labelled). Splits: tlpipe.data.splits. Writes
data/prepared/ (tlpipe.data.dataset's contract), reports/ingest/metrics.json (counts, duplicates) and
reports/ingest/timings.json.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from stages.cli import run_stage
from tlpipe.config.data import DataParams
from tlpipe.data.dataset import INFO_FILE, MANIFEST_FILE, SPLITS, images_file, labels_file
from tlpipe.data.raw import RawDataset
from tlpipe.data.sources import get_source, source_names
from tlpipe.data.splits import make_splits
from tlpipe.paths import Paths
from tlpipe.util.atomic import atomic_dir, write_json
from tlpipe.util.errors import DataError
from tlpipe.util.hashing import fingerprint

if TYPE_CHECKING:
    from tlpipe.config.params import Params

log = logging.getLogger(__spec__.name)


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
    raw = read_source(params.data, paths)
    read_s = time.perf_counter() - start
    splits, dropped = make_splits(raw, params.data, params.seed)

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
    write_json(paths.reports("ingest") / "metrics.json", metrics)
    seconds = time.perf_counter() - start
    write_json(
        paths.reports("ingest") / "timings.json", {"read_seconds": round(read_s, 2), "seconds": round(seconds, 2)}
    )
    log.info(
        "ingest: %s classes, %s, %s duplicate(s) dropped, %.1f s",
        len(raw.classes),
        ", ".join(f"{s}={metrics['counts'][s]}" for s in SPLITS),
        sum(dropped.values()),
        seconds,
    )
    return metrics


def main() -> None:
    run_stage(run, DataParams)


if __name__ == "__main__":
    main()
