"""The stages' own training step (tlpipe.training.step) where a GPU would take it: float16 with
Keras's loss scaling, and XLA. Both run on CPU too, so they are tested here."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tests.test_train import tiny_params, train_run
from tlpipe.paths import Paths


def test_mixed_float16_trains_through_the_loss_scale_optimizer() -> None:
    import keras
    import tensorflow as tf

    from tlpipe.config.training import EarlyStoppingParams
    from tlpipe.training.loop import EpochData, run_epochs
    from tlpipe.training.optim import compile_model, make_optimizer

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(16, activation="relu"),
                keras.layers.Dense(3),
                keras.layers.Activation("softmax", dtype="float32"),
            ]
        )
        compile_model(
            model, make_optimizer("adam", 1e-2, weight_decay=0.0, momentum=0.0), label_smoothing=0.1, jit_compile=False
        )
        assert type(model.optimizer).__name__ == "LossScaleOptimizer"
        rng = np.random.default_rng(0)
        x = rng.normal(size=(64, 8)).astype("float32")
        y = np.eye(3, dtype="float32")[(x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)]
        batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
        result = run_epochs(
            model,
            train=EpochData(make=lambda epoch: batches, steps=4, samples=64),
            val=batches,
            epochs=4,
            early_stopping=EarlyStoppingParams(monitor="val_loss"),
            batch_size=16,
            phase="fp16",
            label_smoothing=0.1,
        )
    finally:
        keras.mixed_precision.set_global_policy(previous)
    losses = [row["loss"] for row in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert int(model.optimizer.iterations.numpy()) == 16  # no step skipped for an overflow
    assert float(model.optimizer.dynamic_scale.numpy()) > 1.0


def test_xla_compiles_the_step_where_runtime_allows_it(prepared_dir: Path) -> None:
    paths = Paths(prepared_dir)
    metrics = train_run(tiny_params(runtime={"xla": True, "deterministic": False}, train={"epochs": 1}), paths)
    config = json.loads((paths.reports("train") / "config.json").read_text())
    assert config["runtime"]["xla"] is True
    assert math.isfinite(metrics["best"]["val_loss"])


def test_an_epoch_of_unknown_length_takes_exactly_its_steps() -> None:
    """Streamed shards have no known cardinality. Keras 3.15's fit on such a dataset counted one
    optimizer iteration more per epoch than it had batches (8 for 7 on tiny params: the schedule
    and Adam's bias correction one step ahead, train accuracy over 64 samples for 56); the loop's
    own step takes exactly one iteration per batch and averages over the samples it saw."""
    import keras
    import tensorflow as tf

    from tlpipe.config.training import EarlyStoppingParams
    from tlpipe.training.loop import EpochData, run_epochs
    from tlpipe.training.optim import compile_model, make_optimizer

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    compile_model(
        model, make_optimizer("adam", 1e-2, weight_decay=0.0, momentum=0.0), label_smoothing=0.0, jit_compile=False
    )
    x = np.random.default_rng(1).normal(size=(56, 4)).astype("float32")
    y = np.eye(3, dtype="float32")[np.arange(56) % 3]
    batches = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(8)
    assert int(batches.cardinality()) == int(tf.data.UNKNOWN_CARDINALITY)
    result = run_epochs(
        model,
        train=EpochData(make=lambda epoch: batches, steps=7, samples=56),
        val=batches,
        epochs=2,
        early_stopping=EarlyStoppingParams(monitor="val_loss"),
        batch_size=8,
        phase="unknown",
    )
    assert int(model.optimizer.iterations.numpy()) == 14
    correct = np.argmax(model.predict(x, verbose=0), 1) == np.arange(56) % 3
    best = result.history[result.best_epoch - 1]  # the model holds the best epoch's weights
    assert best["val_accuracy"] == float(np.float32(correct.sum()) / np.float32(56))
