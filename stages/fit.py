"""The epoch loop both training stages share: early stopping, best checkpoint, resumable backups,
and one log line per epoch (plus progress lines with an ETA inside long epochs).

Why not keras.callbacks.BackupAndRestore: in Keras 3.15 it records the batch reached but, on
restore, restarts the interrupted epoch from its first batch, and it does not restore
EarlyStopping's or ModelCheckpoint's state. Here each epoch is one `model.fit` call over a
dataset that is a pure function of (seed, epoch) (stages.augment), so a resumed run skips the
batches already trained and continues exactly where the backup was taken: weights, optimizer
state (step count, so the learning-rate schedule too), dropout RNG state, best value so far,
patience counter and history.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from stages.params import EarlyStoppingParams
from stages.runtime import format_seconds

log = logging.getLogger(__name__)

BACKUP_STATE = "backup.json"
BEST_WEIGHTS = "best.weights.h5"


@dataclass
class EpochData:
    """The training batches of epoch e are `make(e)`: `steps` batches, `samples` samples."""

    make: Callable[[int], Any]
    steps: int
    samples: int


@dataclass
class LoopState:
    epoch: int = 0  # the epoch in progress
    step: int = 0  # steps of that epoch already trained
    history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped_early: bool = False
    backup_file: str | None = None  # weights of this state, in the checkpoint directory
    key: str = ""  # what run the state belongs to (params hash): a stale backup is ignored
    # The running sums behind the epoch's train loss/accuracy after `step` steps: without them a
    # resumed epoch would report the mean over the steps after the resume only.
    epoch_metrics: list[list[float]] = field(default_factory=list)


@dataclass
class LoopResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_value: float
    monitor: str
    stopped_early: bool
    resumed_from: tuple[int, int] | None
    seconds: float


def improved(monitor: str, value: float, best: float | None, min_delta: float) -> bool:
    if best is None:
        return not math.isnan(value)
    if "loss" in monitor:
        return value < best - min_delta
    return value > best + min_delta


class Backups:
    """Resumable state in a checkpoint directory (outside the DVC outs, so it survives a kill)."""

    def __init__(self, directory: Path, key: str) -> None:
        self.dir = Path(directory)
        self.key = key

    def load(self, model: Any) -> LoopState | None:
        path = self.dir / BACKUP_STATE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            state = LoopState(**{k: v for k, v in raw.items() if k != "rng"})
        except (ValueError, TypeError) as err:
            log.warning("ignoring unreadable backup %s (%s)", path, err)
            return None
        if state.key != self.key:
            log.warning("discarding backup %s: it belongs to other params (key %s, now %s)", path, state.key, self.key)
            self.clear()
            return None
        weights = self.dir / (state.backup_file or "")
        if not weights.is_file():
            log.warning("ignoring backup %s: weights file %s missing", path, weights)
            return None
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(weights)  # weights and optimizer variables
        _set_rng_state(model, raw.get("rng", []))
        return state

    def save(self, model: Any, state: LoopState) -> None:
        """Weights under a new name, then the state naming them, then the old file goes: a kill
        at any point leaves a state whose weights exist."""
        self.dir.mkdir(parents=True, exist_ok=True)
        old = state.backup_file
        name = f"backup-{state.epoch:04d}-{state.step:07d}.weights.h5"
        tmp = self.dir / f".tmp-{os.getpid()}.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, self.dir / name)
        state.backup_file = name
        state.key = self.key
        state.epoch_metrics = [np.asarray(v.numpy()).tolist() for v in model.metrics_variables] if state.step else []
        payload = {**asdict(state), "rng": _rng_state(model)}
        tmp_json = self.dir / f".tmp-{os.getpid()}.json"
        tmp_json.write_text(json.dumps(payload))
        os.replace(tmp_json, self.dir / BACKUP_STATE)
        if old and old != name:
            (self.dir / old).unlink(missing_ok=True)

    def save_best(self, model: Any) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp-best-{os.getpid()}.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, self.dir / BEST_WEIGHTS)

    def load_best(self, model: Any) -> None:
        model.load_weights(self.dir / BEST_WEIGHTS)

    def clear(self) -> None:
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)


class RestoreEpochMetrics(keras.callbacks.Callback):
    """Adds the running metric sums of a partly trained epoch back in after the first resumed step.

    Not earlier: without a distribution strategy Keras builds the compiled metrics while tracing
    the first train step. The loss and accuracy metrics are sums and counts, so `saved + first
    step` is the very float addition an uninterrupted epoch would have made."""

    def __init__(self, values: list[list[float]]) -> None:
        super().__init__()
        self.values = values

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if batch != 0:  # batches count from 0 in each fit call, the skipped ones excluded
            return
        variables = self.model.metrics_variables
        if len(variables) != len(self.values):
            log.warning("not restoring the epoch's running metrics: %d saved, the model has %d", len(self.values), len(variables))
            return
        for v, value in zip(variables, self.values):
            v.assign(np.asarray(value, dtype=v.dtype) + np.asarray(v.numpy()))


def _rng_state(model: Any) -> list[list[int]]:
    # Dropout's SeedGenerator state is a model variable that save_weights leaves out.
    return [np.asarray(v.numpy()).tolist() for v in model.variables if "seed_generator_state" in v.path]


def _set_rng_state(model: Any, values: list[list[int]]) -> None:
    variables = [v for v in model.variables if "seed_generator_state" in v.path]
    if len(values) == len(variables):
        for v, value in zip(variables, values):
            v.assign(np.asarray(value, dtype=v.dtype))


class Progress(keras.callbacks.Callback):
    """A progress line with ETA every `every` seconds inside an epoch; `on_step(step)` after each step."""

    def __init__(
        self,
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
                self.phase, self.epoch + 1, self.epochs, step, self.steps, logs.get("loss", math.nan),
                logs.get("accuracy", math.nan), rate * self.batch_size, format_seconds(left_epoch),
                format_seconds(left_run),
            )  # fmt: skip
            self.last = now


def run_epochs(
    model: Any,
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
) -> LoopResult:
    """Train `model` (compiled, with an `accuracy` metric) for up to `epochs` epochs and leave
    it holding the weights of its best epoch by early_stopping.monitor."""
    monitor = early_stopping.monitor
    state = (backups.load(model) if backups else None) or LoopState()
    resumed_from = (state.epoch, state.step) if (state.epoch or state.step) else None
    if resumed_from:
        log.info("%s: resuming from epoch %d step %d (backup in %s)", phase, state.epoch + 1, state.step, backups.dir)
    best_in_memory: list[Any] | None = None
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
            restore = [RestoreEpochMetrics(state.epoch_metrics)]
        t0 = time.perf_counter()
        progress = Progress(phase, epoch, epochs, skip, train.steps, batch_size, log_every, step_backup(epoch))
        hist = model.fit(
            ds, validation_data=val, epochs=epoch + 1, initial_epoch=epoch, verbose=0, shuffle=False,
            callbacks=[*restore, progress, *callbacks],
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        logs = {k: float(v[-1]) for k, v in hist.history.items()}
        if monitor not in logs:
            raise ValueError(
                f"early_stopping.monitor={monitor!r} is not a metric of this run; expected one of {sorted(logs)}"
            )
        trained_samples = (train.steps - skip) * batch_size
        row = {
            "epoch": epoch + 1,
            **{k: logs[k] for k in sorted(logs)},
            "learning_rate": _current_lr(model),
            "seconds": seconds,
            # Training throughput: the first step's tracing included, the validation pass not.
            "samples_per_second": trained_samples / max(progress.train_seconds, 1e-9),
        }
        state.history.append(row)
        value = logs[monitor]
        if improved(monitor, value, state.best, early_stopping.min_delta):
            state.best, state.best_epoch, state.wait = value, epoch + 1, 0
            if backups:
                backups.save_best(model)
            else:
                best_in_memory = [v.numpy() for v in model.variables]
            mark = " *"
        else:
            state.wait += 1
            mark = ""
        eta = (epochs - epoch - 1) * seconds
        log.info(
            "%s epoch %d/%d: loss %.4f accuracy %.4f val_loss %.4f val_accuracy %.4f lr %.3g, %s, train %.0f img/s, ETA %s%s",
            phase, epoch + 1, epochs, logs.get("loss", math.nan), logs.get("accuracy", math.nan),
            logs.get("val_loss", math.nan), logs.get("val_accuracy", math.nan), row["learning_rate"],
            format_seconds(seconds), row["samples_per_second"], format_seconds(eta), mark,
        )  # fmt: skip
        state.epoch, state.step = epoch + 1, 0
        if early_stopping.enabled and state.wait > 0 and state.wait >= early_stopping.patience and state.epoch < epochs:
            # Keras's rule: stop once `patience` epochs in a row brought no improvement.
            state.stopped_early = True
            log.info("%s: early stop after epoch %d: no %s improvement for %d epoch(s)", phase, epoch + 1, monitor, state.wait)
        if backups:
            backups.save(model, state)  # also after the last epoch: a kill while saving resumes at the end

    if state.best_epoch is None:
        raise ValueError(f"{phase}: {monitor} was never a number (training diverged?)")
    if backups:
        backups.load_best(model)
    elif best_in_memory is not None:
        for v, value in zip(model.variables, best_in_memory):
            v.assign(value)
    return LoopResult(
        history=state.history,
        best_epoch=state.best_epoch,
        best_value=float(state.best),
        monitor=monitor,
        stopped_early=state.stopped_early,
        resumed_from=resumed_from,
        seconds=time.perf_counter() - start,
    )


def _current_lr(model: Any) -> float:
    try:
        return float(np.asarray(model.optimizer.learning_rate))
    except Exception:  # an optimizer without a readable learning rate
        return math.nan


def make_optimizer(name: str, learning_rate: Any, weight_decay: float, momentum: float) -> Any:
    """Adam, AdamW, SGD (momentum, Nesterov) or RMSprop; learning_rate may be a schedule."""
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
    learning_rate: float, total_steps: int, warmup_steps: int, min_learning_rate: float, constant: bool
) -> Any:
    """Linear warmup from 0 to `learning_rate`, then cosine decay to `min_learning_rate` at the last
    step (constant: stay at `learning_rate`). A built-in Keras schedule: it serialises with the model."""
    warmup_steps = min(max(0, warmup_steps), max(0, total_steps - 1))
    alpha = 1.0 if constant else min(1.0, min_learning_rate / learning_rate)
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(learning_rate, max(1, total_steps), alpha=alpha)
    # Start the warmup at lr/(warmup+1), not 0: a zero learning rate would waste the first step.
    return keras.optimizers.schedules.CosineDecay(
        learning_rate / (warmup_steps + 1),
        max(1, total_steps - warmup_steps),
        alpha=alpha,
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


def compile_model(model: Any, optimizer: Any, label_smoothing: float, jit_compile: bool) -> None:
    """One-hot targets, so label smoothing works; the metric is named `accuracy` in every case."""
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=jit_compile,
    )


def write_reports(
    directory: Path,
    result: LoopResult,
    extra: dict[str, Any],
    texts: dict[str, str],
) -> dict[str, Any]:
    """reports/<stage>/ written whole or not at all: dvclive metrics.json and per-epoch plots
    (train/ and val/ loss and accuracy, learning rate), plus text files (model summary, config).
    Returns the metrics as written."""
    from stages.atomic import atomic_dir

    with atomic_dir(directory) as tmp:
        live = _files_only_live(tmp)
        for row in result.history:
            for split, prefix in (("train", ""), ("val", "val_")):
                for metric in ("loss", "accuracy"):
                    if prefix + metric in row:
                        live.log_metric(f"{split}/{metric}", row[prefix + metric])
            live.log_metric("learning_rate", row["learning_rate"])
            live.next_step()
        best = result.history[result.best_epoch - 1]
        summary = {
            "best": {
                "epoch": result.best_epoch,
                "val_accuracy": best.get("val_accuracy", math.nan),
                "val_loss": best.get("val_loss", math.nan),
                "accuracy": best.get("accuracy", math.nan),
                "loss": best.get("loss", math.nan),
            },
            "epochs_run": len(result.history),
            "stopped_early": int(result.stopped_early),
            "seconds": round(result.seconds, 2),
            "samples_per_second": round(float(np.median([r["samples_per_second"] for r in result.history])), 1),
            **extra,
        }
        for name, value in _flatten(summary):
            live.log_metric(name, value, plot=False)
        live.end()
        for name, text in texts.items():
            (tmp / name).write_text(text)
        metrics = json.loads((tmp / "metrics.json").read_text())
    return metrics


def _files_only_live(directory: Path) -> Any:
    """dvclive writing metrics.json and the per-epoch .tsv plots, nothing else.

    No dvc.yaml of its own and no experiment commits: the project's dvc.yaml declares these
    files and `dvc exp run` records experiments. Its DVC/git hook-up is skipped too: dvclive 3.49
    raises from it in a git repo without commits (scm.get_rev(): "Empty git repo"), which made a
    first `dvc repro` in a fresh repo fail; skipping it is dvclive's own path when that hook-up
    fails with a DvcException.
    """
    from dvclive import Live

    class FilesOnlyLive(Live):
        def _init_dvc(self) -> None:
            return None

    return FilesOnlyLive(dir=str(directory), save_dvc_exp=False, dvcyaml=None, report=None)


def _flatten(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict):
            out.extend(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, bool):
            out.append((f"{prefix}{k}", int(v)))
        elif isinstance(v, (int, float, str)):
            out.append((f"{prefix}{k}", v))
    return out
