"""The feature cache: backbone features computed once, reused by every head-training run.

A frozen backbone gives the same pooled features for an image every epoch, so the head phase
computes them once per split and trains on the stored array. Entries live in
`<cache>/<backbone>-<size>px-<key>/<split>-<data fingerprint>.npy` (<cache>: tlpipe.paths,
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

from tlpipe.model.classifier import ModelSpec
from tlpipe.util.atomic import atomic_file, write_json
from tlpipe.util.durations import format_seconds

log = logging.getLogger(__spec__.name)


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
    return directory / f"{split}-{fingerprint[:16]}.npy"


def cached_features(
    extractor: Any,
    images: np.ndarray,
    *,
    path: Path,
    describe: dict[str, Any],
    batch_size: int,
    log_every: float = 30.0,
) -> tuple[np.ndarray, bool]:
    """Pooled features (float32 N×F) of `images`, from the cache file `path` or computed and stored.

    Returns (features, hit). A miss runs the frozen extractor once over the split in batches
    (never materialising resized images) and writes the file atomically; `describe` goes into
    the directory's cache.json, for people.
    """
    what = f"features {path.name.split('-')[0]}"
    if path.is_file():
        feats = np.load(path, mmap_mode=None, allow_pickle=False)
        if feats.shape[0] == len(images):
            log.info("%s: cache hit %s (%d×%d)", what, path, *feats.shape)
            return feats, True
        log.warning("%s: %s has %d rows for %d images; recomputing", what, path, feats.shape[0], len(images))
    feats = compute_features(extractor, images, batch_size, what, log_every)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        np.save(tmp, feats, allow_pickle=False)
    meta = path.parent / "cache.json"
    if not meta.exists():
        write_json(meta, describe)
    return feats, False


def compute_features(
    extractor: Any, images: np.ndarray, batch_size: int, what: str, log_every: float = 30.0
) -> np.ndarray:
    """Run `extractor` over uint8 images batch by batch through tf.data, with progress and ETA."""
    import tensorflow as tf

    n = len(images)
    dim = int(extractor.outputs[0].shape[-1])
    out = np.empty((n, dim), np.float32)
    if n == 0:
        return out
    ds = image_batches(images, batch_size)
    step = tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)
    start = last = time.perf_counter()
    done = 0
    for batch in ds:
        out[done : done + len(batch)] = np.asarray(step(batch), dtype=np.float32)
        done += len(batch)
        now = time.perf_counter()
        if now - last >= log_every and done < n:
            rate = done / (now - start)
            log.info("%s: %d/%d images, %.0f img/s, ETA %s", what, done, n, rate, format_seconds((n - done) / rate))
            last = now
    elapsed = time.perf_counter() - start
    log.info("%s: %d images in %s (%.0f img/s)", what, n, format_seconds(elapsed), n / max(elapsed, 1e-9))
    return out


def image_batches(images: np.ndarray, batch_size: int, indices: np.ndarray | None = None) -> Any:
    """A tf.data pipeline of uint8 image batches gathered from an in-memory array (in order or by
    `indices`); resizing happens inside the model, batch by batch."""
    import tensorflow as tf

    data = tf.constant(np.ascontiguousarray(images))
    idx = np.arange(len(images)) if indices is None else np.asarray(indices)
    ds = tf.data.Dataset.from_tensor_slices(idx.astype(np.int64)).batch(batch_size)
    return ds.map(lambda i: tf.gather(data, i), num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)
