"""The epoch loop both training stages share: early stopping, the best epoch's weights, resumable
backups (tlpipe.training.backups), and one log line per epoch (plus progress lines with an ETA inside
long epochs).

Each epoch is one `model.fit` call over a dataset that is a pure function of (seed, epoch)
(tlpipe.training.augment), so a resumed run skips the batches already trained and continues exactly
where the backup was taken.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlpipe.config.training import EarlyStoppingParams
from tlpipe.training.backups import Backups, LoopState, restore_epoch_metrics_callback
from tlpipe.util.durations import format_seconds

log = logging.getLogger(__spec__.name)


@dataclass
class EpochData:
    """The training batches of epoch e are `make(e)`: `steps` batches, `samples` samples."""

    make: Callable[[int], Any]
    steps: int
    samples: int


@dataclass
class LoopResult:
    history: list[dict[str, float]]  # per epoch: metrics, learning rate (no timings)
    best_epoch: int
    best_value: float
    monitor: str
    stopped_early: bool
    resumed_from: tuple[int, int] | None
    seconds: float
    epoch_seconds: list[float]  # of the epochs this process ran
    samples_per_second: list[float]


def improved(monitor: str, value: float, best: float | None, min_delta: float) -> bool:
    if best is None:
        return not math.isnan(value)
    if "loss" in monitor:
        return value < best - min_delta
    return value > best + min_delta


@functools.cache
def progress_callback() -> type:
    """The Progress callback class, made on first use: Keras (and TensorFlow) are imported when an
    epoch runs, not when a stage module is imported (an entry point quiets TensorFlow first)."""
    import keras

    class Progress(keras.callbacks.Callback):
        """A progress line with ETA every `every` seconds inside an epoch; `on_step(step)` after each step."""

        def __init__(
            self,
            *,
            phase: str,
            epoch: int,
            epochs: int,
            first_step: int,
            steps: int,
            batch_size: int,
            every: float,
            on_step: Callable[[int], None] | None = None,
        ) -> None:
            super().__init__()
            self.phase, self.epoch, self.epochs = phase, epoch, epochs
            self.first_step, self.steps, self.batch_size = first_step, steps, batch_size
            self.every, self.on_step = every, on_step
            self.start = self.last = time.perf_counter()
            self.train_seconds = 0.0

        def on_train_begin(self, logs: Any = None) -> None:
            self.start = self.last = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            step = self.first_step + batch + 1
            if self.on_step is not None:
                self.on_step(step)
            now = time.perf_counter()
            self.train_seconds = now - self.start  # up to the last training step: validation excluded
            if now - self.last >= self.every and step < self.steps:
                rate = (batch + 1) / (now - self.start)  # steps per second in this fit call
                left_epoch = (self.steps - step) / rate
                left_run = left_epoch + (self.epochs - self.epoch - 1) * self.steps / rate
                logs = logs or {}
                log.info(
                    "%s epoch %d/%d step %d/%d: loss %.4f accuracy %.4f, %.0f img/s, epoch ETA %s, run ETA %s",
                    self.phase,
                    self.epoch + 1,
                    self.epochs,
                    step,
                    self.steps,
                    logs.get("loss", math.nan),
                    logs.get("accuracy", math.nan),
                    rate * self.batch_size,
                    format_seconds(left_epoch),
                    format_seconds(left_run),
                )
                self.last = now

    return Progress


def run_epochs(
    model: Any,
    *,
    train: EpochData,
    val: Any,
    epochs: int,
    early_stopping: EarlyStoppingParams,
    batch_size: int,
    phase: str,
    backups: Backups | None = None,
    backup_every_steps: int = 0,
    log_every: float = 30.0,
    callbacks: Sequence[Any] = (),
    keep_last: bool = False,
) -> LoopResult:
    """Train `model` (compiled, with an `accuracy` metric) for up to `epochs` epochs and leave
    it holding the weights of its best epoch by early_stopping.monitor (its last epoch with
    `keep_last`, for a final fit whose validation images are among its training images)."""
    monitor, patience = early_stopping.monitor, early_stopping.patience
    min_delta, stop_early = early_stopping.min_delta, early_stopping.enabled
    state = (backups.load(model) if backups else None) or LoopState()
    resumed_from = (state.epoch, state.step) if (state.epoch or state.step) else None
    if resumed_from:
        log.info("%s: resuming from epoch %d step %d (backup in %s)", phase, state.epoch + 1, state.step, backups.dir)
    best_in_memory: list[Any] | None = None
    epoch_seconds: list[float] = []
    throughput: list[float] = []
    start = time.perf_counter()

    def step_backup(epoch: int) -> Callable[[int], None] | None:
        if not backups or backup_every_steps <= 0:
            return None

        def on_step(step: int) -> None:
            if step % backup_every_steps == 0 and step < train.steps:
                state.epoch, state.step = epoch, step
                backups.save(model, state)

        return on_step

    while state.epoch < epochs and not state.stopped_early:
        epoch, skip = state.epoch, state.step
        ds = train.make(epoch)
        restore = []
        if skip:
            ds = ds.skip(skip)
            restore = [restore_epoch_metrics_callback(state.epoch_metrics)]
        t0 = time.perf_counter()
        progress = progress_callback()(
            phase=phase,
            epoch=epoch,
            epochs=epochs,
            first_step=skip,
            steps=train.steps,
            batch_size=batch_size,
            every=log_every,
            on_step=step_backup(epoch),
        )
        hist = model.fit(
            ds,
            validation_data=val,
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=0,
            shuffle=False,
            callbacks=[*restore, progress, *callbacks],
        )
        seconds = time.perf_counter() - t0
        logs = {k: float(v[-1]) for k, v in hist.history.items()}
        if monitor not in logs:
            raise ValueError(
                f"early_stopping.monitor={monitor!r} is not a metric of this run; expected one of {sorted(logs)}"
            )
        # Training throughput: the first step's tracing included, the validation pass not.
        epoch_seconds.append(seconds)
        throughput.append((train.steps - skip) * batch_size / max(progress.train_seconds, 1e-9))
        row = {"epoch": epoch + 1, **{k: logs[k] for k in sorted(logs)}, "learning_rate": _current_lr(model)}
        state.history.append(row)
        value = logs[monitor]
        if keep_last:
            state.best, state.best_epoch, mark = value, epoch + 1, ""
        elif improved(monitor, value, state.best, min_delta):
            state.best, state.best_epoch, state.wait = value, epoch + 1, 0
            if backups and backups.enabled:
                backups.save_best(model)
            else:
                best_in_memory = [v.numpy() for v in model.variables]
            mark = " *"
        else:
            state.wait += 1
            mark = ""
        log.info(
            "%s epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f "
            "val_accuracy %.4f lr %.3g, %s, train %.0f img/s, ETA %s%s",
            phase,
            epoch + 1,
            epochs,
            logs.get("loss", math.nan),
            logs.get("accuracy", math.nan),
            logs.get("val_loss", math.nan),
            logs.get("val_accuracy", math.nan),
            row["learning_rate"],
            format_seconds(seconds),
            throughput[-1],
            format_seconds((epochs - epoch - 1) * seconds),
            mark,
        )
        state.epoch, state.step = epoch + 1, 0
        if stop_early and state.wait > 0 and state.wait >= patience and state.epoch < epochs:
            # Keras's rule: stop once `patience` epochs in a row brought no improvement.
            state.stopped_early = True
            log.info(
                "%s: early stop after epoch %d: no %s improvement for %d epoch(s)",
                phase,
                epoch + 1,
                monitor,
                state.wait,
            )
        if backups:
            backups.save(model, state)  # also after the last epoch: a kill while saving resumes at the end

    if state.best_epoch is None:
        raise ValueError(f"{phase}: {monitor} was never a number (training diverged?)")
    if keep_last:
        pass  # the model holds the last epoch's weights
    elif backups and backups.enabled:
        backups.load_best(model)
    elif best_in_memory is not None:
        for v, value in zip(model.variables, best_in_memory, strict=True):
            v.assign(value)
    return LoopResult(
        history=state.history,
        best_epoch=state.best_epoch,
        best_value=float(state.best),
        monitor=monitor,
        stopped_early=state.stopped_early,
        resumed_from=resumed_from,
        seconds=time.perf_counter() - start,
        epoch_seconds=epoch_seconds,
        samples_per_second=throughput,
    )


def _current_lr(model: Any) -> float:
    try:
        return float(np.asarray(model.optimizer.learning_rate))
    except Exception:  # noqa: BLE001 - an optimizer without a readable learning rate
        return math.nan
