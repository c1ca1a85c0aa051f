"""Optimizers, the warmup + cosine learning-rate schedule, and compiling a model to train."""

from __future__ import annotations

from typing import Any


def make_optimizer(name: str, learning_rate: Any, *, weight_decay: float, momentum: float) -> Any:
    """Adam, AdamW, SGD (momentum, Nesterov) or RMSprop; learning_rate may be a schedule."""
    import keras

    wd = weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=wd)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=momentum, nesterov=momentum > 0, weight_decay=wd)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, momentum=momentum, weight_decay=wd)
    raise ValueError(f"optimizer={name!r}: expected adam, adamw, sgd or rmsprop")


def warmup_cosine(
    learning_rate: float, *, total_steps: int, warmup_steps: int, min_learning_rate: float, constant: bool
) -> Any:
    """Linear warmup to `learning_rate`, then cosine decay to `min_learning_rate` at the last step
    (constant: stay at `learning_rate`). A built-in Keras schedule: it serialises with the model.

    With w warmup steps, step s < w has lr·(s+1)/(w+1) (it starts at lr/(w+1), not 0: a zero
    learning rate would waste the first step), and step s ≥ w has
    min + (lr - min)·(1 + cos(π·(s-w)/(total-w)))/2.
    """
    import keras

    warmup_steps = min(max(0, warmup_steps), max(0, total_steps - 1))
    alpha = 1.0 if constant else min(1.0, min_learning_rate / learning_rate)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, max(1, total_steps), alpha=alpha)
    return keras.optimizers.schedules.CosineDecay(
        learning_rate / (warmup_steps + 1),
        max(1, total_steps - warmup_steps),
        alpha=alpha,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


def compile_model(model: Any, optimizer: Any, *, label_smoothing: float, jit_compile: bool) -> None:
    """One-hot targets, so label smoothing works; the metric is named `accuracy` in every case.

    The epoch loop trains with its own distributed step (tlpipe.training.step), not `fit`; compiling
    still gives the model its optimizer (saved with the weights by the backups), and under
    mixed_float16 wraps it in Keras's LossScaleOptimizer."""
    import keras

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )
