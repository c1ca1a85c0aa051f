"""Training batches as a pure function of (seed, epoch): shuffling and augmentation, stateless.

Every epoch's order comes from `numpy.random.default_rng([seed, epoch])` and every batch's
augmentation from stateless TF random ops seeded with (seed, epoch, step). Nothing depends on
what ran before, so a run resumed mid-epoch (tlpipe.training.loop) sees exactly the batches an
uninterrupted run would have seen, and the same params give the same batches on every machine.

A split too large for memory is streamed from its shards instead (streamed_batches): the order
is then the shards' seeded epoch order, still a pure function of (data, seed, epoch).

Augmentation runs on native-size uint8 images (cheap: 32×32 for CIFAR-10), before the model's
own resizing: flip, rotation, zoom and translation are one affine warp per batch (reflect fill);
contrast is a per-image scale around the image mean.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tlpipe.config.training import AugmentParams
from tlpipe.data.records import Records

_STEP_STRIDE = 1 << 24  # (epoch, step) → one int: epochs never share a seed for up to 16M steps


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def steps_per_epoch(n: int, batch_size: int, cap: int | None = None) -> int:
    """Full batches only (a ragged last batch would retrace, and recompile under XLA); at least one."""
    steps = max(1, n // batch_size)
    return min(steps, cap) if cap else steps


def training_batches(
    x: np.ndarray | Any,
    y: np.ndarray | Any,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    augment: AugmentParams | None = None,
    steps: int | None = None,
) -> Any:
    """tf.data of (x, y) batches for one epoch; x is images (augmented if asked) or features."""
    import tensorflow as tf

    xs = x if isinstance(x, tf.Tensor) else tf.constant(np.ascontiguousarray(x))
    ys = y if isinstance(y, tf.Tensor) else tf.constant(np.ascontiguousarray(y))
    n = int(xs.shape[0])
    steps = steps or steps_per_epoch(n, batch_size)
    order = epoch_order(n, seed, epoch)
    # Full batches: take the first steps*batch_size of this epoch's order (or all when smaller).
    order = order[: min(n, steps * batch_size)]
    ds = tf.data.Dataset.from_tensor_slices(order.astype(np.int64)).batch(batch_size).take(steps)
    active = augment is not None and is_active(augment)

    def gather(step: Any, idx: Any) -> tuple[Any, Any]:
        bx, by = tf.gather(xs, idx), tf.gather(ys, idx)
        if active:
            pair = tf.stack([tf.constant(seed, tf.int64), tf.constant(epoch * _STEP_STRIDE, tf.int64) + step])
            bx = augment_batch(bx, augment, pair)
        return bx, by

    return ds.enumerate().map(gather, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def eval_batches(x: np.ndarray | Any, y: np.ndarray | Any, batch_size: int) -> Any:
    import tensorflow as tf

    xs = x if isinstance(x, tf.Tensor) else tf.constant(np.ascontiguousarray(x))
    ys = y if isinstance(y, tf.Tensor) else tf.constant(np.ascontiguousarray(y))
    n = int(xs.shape[0])
    ds = tf.data.Dataset.range(n).batch(batch_size)
    return ds.map(lambda i: (tf.gather(xs, i), tf.gather(ys, i)), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def streamed_batches(
    records: Records,
    num_classes: int,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    augment: AugmentParams | None = None,
    steps: int | None = None,
) -> Any:
    """training_batches for a split streamed from its shards (too large to hold in memory): the
    order is the shards' seeded epoch order (Records.epoch), the augmentation the same stateless
    per-step randomness, records parsed a batch at a time in parallel."""
    import tensorflow as tf

    steps = steps or steps_per_epoch(records.count, batch_size)
    active = augment is not None and is_active(augment)

    def prepare(step: Any, serialized: Any) -> tuple[Any, Any]:
        bx, labels = records.parse(serialized)
        if active:
            pair = tf.stack([tf.constant(seed, tf.int64), tf.constant(epoch * _STEP_STRIDE, tf.int64) + step])
            bx = augment_batch(bx, augment, pair)
        return bx, tf.one_hot(labels, num_classes, dtype=tf.float32)

    ds = records.epoch(batch_size=batch_size, seed=seed, epoch=epoch, steps=steps)
    return ds.enumerate().map(prepare, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def streamed_eval_batches(records: Records, num_classes: int, batch_size: int) -> Any:
    """eval_batches for a split streamed from its shards, in stored order."""
    import tensorflow as tf

    return records.dataset(batch_size).map(
        lambda x, y: (x, tf.one_hot(y, num_classes, dtype=tf.float32)), num_parallel_calls=tf.data.AUTOTUNE
    )


def is_active(a: AugmentParams) -> bool:
    return bool(a.flip or a.translate or a.rotation or a.zoom or a.contrast)


def augment_batch(images: Any, a: AugmentParams, seed: Any) -> Any:
    """Augment a uint8 NHWC batch with stateless randomness drawn from `seed` (int64[2])."""
    import tensorflow as tf

    shape = tf.shape(images)
    b, h, w = shape[0], shape[1], shape[2]
    u = tf.random.stateless_uniform(tf.stack([b, 6]), seed=seed, minval=-1.0, maxval=1.0)
    flip, rotation, zoom, translate, contrast = a.flip, a.rotation, a.zoom, a.translate, a.contrast
    if flip or rotation or zoom or translate:
        hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
        mirror = tf.where(u[:, 0] < 0, -1.0, 1.0) if flip else tf.ones_like(u[:, 0])
        theta = u[:, 1] * (rotation * 2.0 * math.pi)  # Keras RandomRotation: factor × 2π
        scale = 1.0 + u[:, 2] * zoom  # sampled input span per output pixel
        tx, ty = u[:, 3] * (translate * wf), u[:, 4] * (translate * hf)
        cos, sin = tf.cos(theta) * scale, tf.sin(theta) * scale
        # Output pixel p maps to input c + A (p - c) - t, with A = scale·R(θ)·diag(mirror, 1).
        a00, a01, a10, a11 = cos * mirror, -sin, sin * mirror, cos
        cx, cy = (wf - 1.0) / 2.0, (hf - 1.0) / 2.0
        a02 = cx - a00 * cx - a01 * cy - tx
        a12 = cy - a10 * cx - a11 * cy - ty
        zeros = tf.zeros_like(a00)
        transforms = tf.stack([a00, a01, a02, a10, a11, a12, zeros, zeros], axis=1)
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=tf.stack([h, w]),
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="REFLECT",
        )
    if contrast:
        factor = 1.0 + u[:, 5] * contrast
        x = tf.cast(images, tf.float32)
        mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
        x = (x - mean) * factor[:, None, None, None] + mean
        images = tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)
    return images
