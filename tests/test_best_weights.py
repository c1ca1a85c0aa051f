"""Early stopping keeps the best epoch's weights, not the last ones, in both training stages; the
fine-tuning schedule's learning rates are the documented formula's."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_prepared
from tests.test_train import tiny_params
from tlpipe.model.classifier import HEAD_LAYER
from tlpipe.paths import Paths


def snapshots():
    """A Keras callback keeping a copy of the trained model's weights at the end of every epoch."""
    import keras

    class Snapshots(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs: list[list[np.ndarray]] = []

        def on_epoch_end(self, epoch: int, logs: object = None) -> None:
            self.epochs.append([w.copy() for w in self.model.get_weights()])

    return Snapshots()


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def damage_before_last_validation(epochs: int):
    """A Keras callback that, once the last epoch's training steps are done and just before its
    validation pass, turns the classifier's output layer around (kernel and bias × -100): every
    prediction becomes confidently wrong, so that epoch's val_loss is far worse than any earlier
    one's on any CPU. The best epoch is then an earlier one by construction, not by luck."""
    import keras

    class Damage(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epoch = -1
            self.damaged = False

        def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
            self.epoch = epoch  # the global epoch: the stages fit one epoch per call (initial_epoch)

        def on_test_begin(self, logs: object = None) -> None:
            if self.epoch != epochs - 1 or self.damaged:
                return
            classes = self.model.outputs[0].shape[-1]
            output = [v for v in self.model.weights if v.shape[-1] == classes and len(v.shape) in (1, 2)]
            assert output, "no output layer weights found to damage"
            for v in output:
                v.assign(-100.0 * v.numpy())
            self.damaged = True

    return Damage()


STOPPING = {"early_stopping": {"monitor": "val_loss", "patience": 10}}  # never stops early here


@pytest.fixture(scope="module")
def head_trained(tmp_path_factory) -> tuple[Path, dict, list[list[np.ndarray]]]:
    import keras

    from stages import train

    root = tmp_path_factory.mktemp("best_weights")
    write_prepared(root / "data" / "prepared", ["cat", "dog", "frog"])
    snap, damage = snapshots(), damage_before_last_validation(4)
    params = tiny_params(train={"epochs": 4, **STOPPING})
    metrics = train.run(params, Paths(root), callbacks=[damage, snap])
    assert damage.damaged
    head = keras.models.load_model(Paths(root).head_model).get_layer(HEAD_LAYER).get_weights()
    return root, metrics, [snap.epochs, head]


def test_train_keeps_the_best_epochs_head_not_the_last(head_trained) -> None:
    _, metrics, (epochs, head) = head_trained
    best = metrics["best"]["epoch"]
    assert metrics["epochs_run"] == 4 and best < 4, metrics["best"]
    assert same(head, epochs[best - 1])
    assert not same(head, epochs[-1])


def test_finetune_keeps_the_best_epochs_weights_not_the_last(head_trained, tmp_path: Path) -> None:
    import keras

    from stages import finetune

    root = tmp_path / "project"
    shutil.copytree(head_trained[0], root)
    snap, damage = snapshots(), damage_before_last_validation(3)
    params = tiny_params(finetune={"epochs": 3, "backup_every_steps": 0, **STOPPING})
    metrics = finetune.run(params, Paths(root), callbacks=[damage, snap])
    assert damage.damaged
    best = metrics["best"]["epoch"]
    assert metrics["epochs_run"] == 3 and best < 3, metrics["best"]
    saved = keras.models.load_model(Paths(root).model).get_weights()
    assert same(saved, snap.epochs[best - 1])
    assert not same(saved, snap.epochs[-1])


def test_warmup_cosine_learning_rates_follow_the_formula() -> None:
    from tlpipe.training.optim import warmup_cosine

    lr, low, total, warmup = 0.1, 0.01, 10, 3
    schedule = warmup_cosine(lr, total_steps=total, warmup_steps=warmup, min_learning_rate=low, constant=False)

    def expected(s: int) -> float:
        if s < warmup:
            return lr * (s + 1) / (warmup + 1)
        return low + (lr - low) * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))) / 2

    for step in (0, 1, 2, 3, 5, 8, 9, 10):
        assert float(schedule(step)) == pytest.approx(expected(step), rel=1e-5), step
    assert float(schedule(10)) == pytest.approx(low)  # decayed to the floor at the end
    constant = warmup_cosine(lr, total_steps=total, warmup_steps=0, min_learning_rate=low, constant=True)
    assert [float(constant(s)) for s in (0, 5, 9)] == pytest.approx([lr] * 3)
