"""The feature cache: backbone features computed once, reused by every head-training run.

A frozen backbone gives the same pooled features for an image every epoch, so the head phase
computes them once per split and trains on the stored records. Entries are folders of shards
(tlpipe.data.records, written and read a batch at a time) with their index:
`<cache>/<backbone>-<size>px-<key>/<split>-<data fingerprint>/` (<cache>: tlpipe.paths,
data/features by default); the key hashes everything the features depend on (backbone, weights,
alpha, input and backbone sizes, interpolation, pooling, precision policy, Keras version), the
file name the split's content. A changed input of any kind is a different file, so the cache is
never stale. It is no DVC output: DVC neither deletes it nor versions it, and keeps its run
cache for the train stage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tlpipe.data.records import Records, RecordsWriter
from tlpipe.model.classifier import ModelSpec
from tlpipe.util.atomic import atomic_dir, write_json
from tlpipe.util.durations import format_seconds
from tlpipe.util.errors import DataError

log = logging.getLogger(__spec__.name)

INDEX_FILE = "index.json"


def cache_dir(root: Path, spec: ModelSpec, policy: str) -> Path:
    """The cache directory of one feature extractor (everything but the data in its key)."""
    import keras

    key_fields = {
        "backbone": spec.backbone.name,
        "weights": spec.weights_id,
        "alpha": spec.alpha,
        "input_shape": list(spec.input_shape),
        "image_size": spec.image_size,
        "interpolation": spec.interpolation,
        "pooling": spec.pooling,
        "policy": policy,
        "keras": keras.__version__,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"{spec.backbone.name}-{spec.image_size}px-{key}"


def cache_file(directory: Path, split: str, fingerprint: str) -> Path:
    """The folder of one split's features: shards and their index (INDEX_FILE)."""
    return directory / f"{split}-{fingerprint[:16]}"


def cached_features(
    extractor: Any,
    images: Records,
    *,
    path: Path,
    describe: dict[str, Any],
    batch_size: int,
    log_every: float = 30.0,
) -> tuple[Records, bool]:
    """Pooled features (float32 records of F values, with the images' labels) of a split's
    images, from the cache folder `path` or computed and stored.

    Returns (features, hit). A miss streams the split's shards through the frozen extractor a
    batch at a time and writes the features as shards of their own, a batch at a time, into a
    folder moved into place whole; `describe` goes into the cache directory's cache.json, for people.
    """
    what = f"features {path.name.split('-')[0]}"
    index = path / INDEX_FILE
    if index.is_file():
        try:
            feats = Records.from_index(path, json.loads(index.read_text()))
        except (DataError, ValueError) as err:
            log.warning("%s: %s unreadable (%s); recomputing", what, path, err)
        else:
            if feats.count == images.count:
                log.info("%s: cache hit %s (%d×%d)", what, path, feats.count, *feats.shape)
                return feats, True
            log.warning("%s: %s has %d rows for %d images; recomputing", what, path, feats.count, images.count)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(path) as tmp:
        written = compute_features(extractor, images, tmp, batch_size, what, log_every)
        write_json(tmp / INDEX_FILE, written.describe())
    meta = path.parent / "cache.json"
    if not meta.exists():
        write_json(meta, describe)
    return Records.from_index(path, written.describe()), False


def compute_features(
    extractor: Any, images: Records, directory: Path, batch_size: int, what: str, log_every: float = 30.0
) -> Records:
    """Run `extractor` over a split's images batch by batch, streamed from its shards, with
    progress and ETA; the features are written as records into `directory`."""
    import tensorflow as tf

    n = images.count
    dim = int(extractor.outputs[0].shape[-1])
    writer = RecordsWriter(directory, "features", count=n, shape=(dim,), dtype="float32")
    step = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
    start = last = time.perf_counter()
    done = 0
    for x, y in images.dataset(batch_size):
        writer.write(np.asarray(step(x), dtype=np.float32), y.numpy())
        done += len(y)
        now = time.perf_counter()
        if now - last >= log_every and done < n:
            rate = done / (now - start)
            log.info("%s: %d/%d images, %.0f img/s, ETA %s", what, done, n, rate, format_seconds((n - done) / rate))
            last = now
    elapsed = time.perf_counter() - start
    log.info("%s: %d images in %s (%.0f img/s)", what, n, format_seconds(elapsed), n / max(elapsed, 1e-9))
    return writer.close()
