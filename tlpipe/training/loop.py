"""The epoch loop both training stages share: early stopping, the best epoch's weights, resumable
backups (tlpipe.training.backups), and one log line per epoch (plus progress lines with an ETA inside
long epochs).

Each epoch runs one distributed training step (tlpipe.training.step: the same code for no strategy,
MirroredStrategy and MultiWorkerMirroredStrategy; Keras's `fit` cannot train across workers) over a
dataset of global batches that is a pure function of (seed, epoch) (tlpipe.training.augment), so a
resumed run skips the batches already trained and continues exactly where the backup was taken.
The Keras callbacks a stage is given are called as `fit` would call them.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tlpipe.config.training import EarlyStoppingParams
from tlpipe.training.backups import Backups, LoopState
from tlpipe.training.step import DistributedStep, in_cluster, lost_worker, sync_from_chief
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
                rate = (batch + 1) / (now - self.start)  # steps per second in this epoch since its start or resume
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


@dataclass
class _Epoch:
    """What one epoch's training pass hands to the bookkeeping after it."""

    logs: dict[str, float]
    seconds: float
    train_seconds: float


class _Callbacks:
    """The Keras callbacks a stage or test passes in, driven as `fit` drives them: set_model, then
    on_train_begin / on_epoch_begin / on_train_batch_begin|end / on_test_begin / on_test_end /
    on_epoch_end / on_train_end, batches counted from 0 in each epoch's call (as each one-epoch
    fit call counted them, the resumed steps excluded)."""

    def __init__(self, callbacks: Sequence[Any], model: Any, params: dict[str, Any]) -> None:
        self.callbacks = list(callbacks)
        for c in self.callbacks:
            c.set_model(model)
            c.set_params(params)

    def __getattr__(self, hook: str) -> Callable[..., None]:
        def call(*args: Any) -> None:
            for c in self.callbacks:
                getattr(c, hook)(*args)

        return call


class _Logs(Mapping):
    """Running train metrics for a batch callback, read from the device only if a callback asks."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read, self._values = read, None

    def _get(self) -> dict[str, float]:
        if self._values is None:
            self._values = self._read()
        return self._values

    def __getitem__(self, key: str) -> float:
        return self._get()[key]

    def __iter__(self) -> Any:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def run_epochs(
    model: Any,
    *,
    train: EpochData,
    val: Any,
    epochs: int,
    early_stopping: EarlyStoppingParams,
    batch_size: int,
    phase: str,
    label_smoothing: float = 0.0,
    jit_compile: bool = False,
    backups: Backups | None = None,
    backup_every_steps: int = 0,
    log_every: float = 30.0,
    callbacks: Sequence[Any] = (),
    keep_last: bool = False,
) -> LoopResult:
    """Train `model` (compiled: its optimizer) with one distributed step (tlpipe.training.step)
    under the strategy it was built in, for up to `epochs` epochs of `train` (global batches of
    `batch_size`), validating on `val` after each; it ends holding the weights of its best epoch
    by early_stopping.monitor (its last epoch with `keep_last`, for a final fit whose validation
    images are among its training images)."""
    step = DistributedStep(model, global_batch=batch_size, label_smoothing=label_smoothing, jit_compile=jit_compile)
    state = (backups.load(model) if backups else None) or LoopState()
    cluster = in_cluster(step.strategy)
    if cluster:
        # Only the chief holds backups: the other workers take its position and variables.
        sent = sync_from_chief(step.strategy, model, json.dumps(asdict(state)) if state.epoch or state.step else "")
        if sent:
            state = LoopState(**{**json.loads(sent), "backup_file": state.backup_file})
    resumed_from = (state.epoch, state.step) if (state.epoch or state.step) else None
    if resumed_from:
        log.info("%s: resuming from epoch %d step %d (backup in %s)", phase, state.epoch + 1, state.step, backups.dir)
    hooks = _Callbacks(callbacks, model, {"epochs": epochs, "steps": train.steps, "verbose": 0})
    best_in_memory: list[Any] | None = None
    epoch_seconds: list[float] = []
    throughput: list[float] = []
    start = time.perf_counter()
    while state.epoch < epochs and not state.stopped_early:
        epoch, skip = state.epoch, state.step
        try:
            ran = _run_epoch(
                step,
                hooks,
                state,
                train=train,
                val=val,
                epochs=epochs,
                batch_size=batch_size,
                phase=phase,
                backups=backups,
                backup_every_steps=backup_every_steps,
                log_every=log_every,
            )
        except Exception as err:
            lost = lost_worker(err, phase) if cluster else None
            if lost is None:
                raise
            raise lost from None
        logs = ran.logs
        if early_stopping.monitor not in logs:
            raise ValueError(
                f"early_stopping.monitor={early_stopping.monitor!r} is not a metric of this run; "
                f"expected one of {sorted(logs)}"
            )
        # Training throughput: the first step's tracing included, the validation pass not.
        epoch_seconds.append(ran.seconds)
        throughput.append((train.steps - skip) * batch_size / max(ran.train_seconds, 1e-9))
        row = {"epoch": epoch + 1, **{k: logs[k] for k in sorted(logs)}, "learning_rate": _current_lr(model)}
        state.history.append(row)
        mark = _judge(state, logs[early_stopping.monitor], early_stopping, keep_last)
        if mark:
            if backups and backups.enabled:
                backups.save_best(model)
            else:
                best_in_memory = [v.numpy() for v in model.variables]
        _log_epoch(phase, epoch, epochs, row, ran.seconds, throughput[-1], mark)
        state.epoch, state.step = epoch + 1, 0
        _maybe_stop(state, early_stopping, epochs, phase, epoch)
        if backups:
            backups.save(model, state)  # also after the last epoch: a kill while saving resumes at the end

    if state.best_epoch is None:
        raise ValueError(f"{phase}: {early_stopping.monitor} was never a number (training diverged?)")
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
        monitor=early_stopping.monitor,
        stopped_early=state.stopped_early,
        resumed_from=resumed_from,
        seconds=time.perf_counter() - start,
        epoch_seconds=epoch_seconds,
        samples_per_second=throughput,
    )


def _run_epoch(
    step: DistributedStep,
    hooks: _Callbacks,
    state: LoopState,
    *,
    train: EpochData,
    val: Any,
    epochs: int,
    batch_size: int,
    phase: str,
    backups: Backups | None,
    backup_every_steps: int,
    log_every: float,
) -> _Epoch:
    """Epoch `state.epoch` from its step `state.step` on (the steps before it were trained before a
    resume, and their running metric totals come back from the backup), then the validation pass."""
    model, epoch, skip = step.model, state.epoch, state.step
    ds = train.make(epoch)
    if skip:
        ds = ds.skip(skip)
    # The running totals of the steps already trained: `saved + next step` is the very float
    # addition an uninterrupted epoch would have made.
    step.reset(step.train_totals, state.epoch_metrics[0] if skip and _resumable(state.epoch_metrics) else None)
    if skip and not _resumable(state.epoch_metrics):
        log.warning(
            "%s: the backup holds no running metrics for epoch %d; its train metrics cover the resumed steps only",
            phase,
            epoch + 1,
        )

    def on_step(done: int) -> None:
        if backups and backup_every_steps > 0 and done % backup_every_steps == 0 and done < train.steps:
            state.epoch, state.step = epoch, done
            state.epoch_metrics = [np.asarray(step.train_totals.numpy()).tolist()]
            backups.save(model, state)

    progress = progress_callback()(
        phase=phase,
        epoch=epoch,
        epochs=epochs,
        first_step=skip,
        steps=train.steps,
        batch_size=batch_size,
        every=log_every,
        on_step=on_step,
    )
    batch_hooks = _Callbacks([progress], model, {})
    t0 = time.perf_counter()
    batch_hooks.on_train_begin()
    hooks.on_train_begin()
    hooks.on_epoch_begin(epoch)
    for batch, data in enumerate(step.distribute(ds)):
        hooks.on_train_batch_begin(batch)
        step.train(data)
        logs = _Logs(lambda: step.results(step.train_totals))
        batch_hooks.on_train_batch_end(batch, logs)
        hooks.on_train_batch_end(batch, logs)
    train_seconds = progress.train_seconds
    logs = step.results(step.train_totals)
    hooks.on_test_begin()
    step.reset(step.eval_totals)
    for batch, data in enumerate(step.distribute(val)):
        hooks.on_test_batch_begin(batch)
        step.evaluate(data)
        hooks.on_test_batch_end(batch)
    val_logs = step.results(step.eval_totals, prefix="val_")
    hooks.on_test_end(step.results(step.eval_totals))
    logs.update(val_logs)
    hooks.on_epoch_end(epoch, dict(logs))
    hooks.on_train_end(dict(logs))
    return _Epoch(logs=logs, seconds=time.perf_counter() - t0, train_seconds=train_seconds)


def _resumable(values: list[list[float]]) -> bool:
    return len(values) == 1 and len(values[0]) == 3


def _judge(state: LoopState, value: float, es: EarlyStoppingParams, keep_last: bool) -> str:
    """Update the best value and patience counter with this epoch's `value`; " *" when the model
    now holds the weights to keep."""
    epoch = state.epoch + 1
    if keep_last:
        state.best, state.best_epoch = value, epoch
        return ""
    if improved(es.monitor, value, state.best, es.min_delta):
        state.best, state.best_epoch, state.wait = value, epoch, 0
        return " *"
    state.wait += 1
    return ""


def _maybe_stop(state: LoopState, es: EarlyStoppingParams, epochs: int, phase: str, epoch: int) -> None:
    if es.enabled and state.wait > 0 and state.wait >= es.patience and state.epoch < epochs:
        # Keras's rule: stop once `patience` epochs in a row brought no improvement.
        state.stopped_early = True
        log.info(
            "%s: early stop after epoch %d: no %s improvement for %d epoch(s)", phase, epoch + 1, es.monitor, state.wait
        )


def _log_epoch(
    phase: str, epoch: int, epochs: int, row: dict[str, float], seconds: float, rate: float, mark: str
) -> None:
    log.info(
        "%s epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f "
        "val_accuracy %.4f lr %.3g, %s, train %.0f img/s, ETA %s%s",
        phase,
        epoch + 1,
        epochs,
        row.get("loss", math.nan),
        row.get("accuracy", math.nan),
        row.get("val_loss", math.nan),
        row.get("val_accuracy", math.nan),
        row["learning_rate"],
        format_seconds(seconds),
        rate,
        format_seconds((epochs - epoch - 1) * seconds),
        mark,
    )


def _current_lr(model: Any) -> float:
    try:
        return float(np.asarray(model.optimizer.learning_rate))
    except Exception:  # noqa: BLE001 - an optimizer without a readable learning rate
        return math.nan
