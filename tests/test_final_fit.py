"""The final fit (finetune.train_on_val): validation images join training, the last epoch is kept."""

from __future__ import annotations

import json
from typing import Any

import keras
import numpy as np

from stages import finetune, train
from tests.test_best_weights import damage_before_last_validation, same, snapshots
from tests.test_train import tiny_params
from tlpipe.data.dataset import load_split
from tlpipe.paths import Paths
from tlpipe.training import phase


class StepCounter(keras.callbacks.Callback):
    """Training steps per epoch, as Keras ran them."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.steps.append(0)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.steps[-1] += 1


def test_the_final_fit_trains_on_train_and_val_and_keeps_the_last_epoch(prepared_dir, monkeypatch) -> None:
    paths = Paths(prepared_dir)
    train.run(tiny_params(), paths)
    # The images each epoch's batches are drawn from, as the stage hands them to the batcher.
    drawn: list[tuple[np.ndarray, np.ndarray]] = []
    batches = phase.streamed_batches  # the training phase finetune runs (tlpipe.training.phase)

    def recording(records: Any, num_classes: int, **kwargs: Any) -> Any:
        drawn.append(records.load())
        return batches(records, num_classes, **kwargs)

    monkeypatch.setattr(phase, "streamed_batches", recording)
    counter, snap, damage = StepCounter(), snapshots(), damage_before_last_validation(3)
    # Early stopping that would stop after epoch 2 (no val_loss improves by 1e6), and a last epoch
    # whose validation is made the worst of all: a run choosing on validation would keep epoch 1
    # and stop; the final fit applies neither and keeps the last epoch's weights.
    stopping = {"enabled": True, "monitor": "val_loss", "patience": 1, "min_delta": 1e6}
    params = tiny_params(
        finetune={"train_on_val": True, "early_stopping": stopping, "epochs": 3, "steps_per_epoch": None}
    )
    metrics = finetune.run(params, paths, callbacks=[damage, counter, snap])

    (x_train, y_train), (x_val, y_val) = load_split(paths.prepared, "train"), load_split(paths.prepared, "val")
    assert len(drawn) == 3
    for x, y in drawn:  # every epoch: the train images, then the validation images, nothing else
        assert np.array_equal(x, np.concatenate([x_train, x_val]))
        assert np.array_equal(y, np.concatenate([y_train, y_val]))
    # 20 train + 5 val images per class, 3 classes, batches of 8: 9 full steps instead of 7.
    assert counter.steps == [9, 9, 9]
    assert metrics["train_on_val"] == 1 and metrics["epochs_run"] == 3 and metrics["best"]["epoch"] == 3
    assert damage.damaged and same(keras.models.load_model(paths.model).get_weights(), snap.epochs[-1])
    timings = json.loads((paths.reports("finetune") / "timings.json").read_text())
    assert len(timings["epoch_seconds"]) == 3


def test_without_the_final_fit_validation_images_stay_out_of_training(prepared_dir, monkeypatch) -> None:
    paths = Paths(prepared_dir)
    train.run(tiny_params(), paths)
    counter = StepCounter()
    params = tiny_params(finetune={"epochs": 1, "steps_per_epoch": None})
    assert finetune.run(params, paths, callbacks=[counter])["train_on_val"] == 0
    assert counter.steps == [7]  # 60 train images in batches of 8
