"""The training phase both training stages run, once their model is built: compile under the
strategy, the seeded epoch data, the epoch loop; then, on the chief, the float32 model and the
reports. The train stage runs it on the head (features or images), finetune on the whole model
from the trained head; what differs (the model, the inputs, the learning rate, augmentation,
backups) is given.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlpipe.data.records import Records
from tlpipe.model.classifier import rebuild_float32, summary_text
from tlpipe.model.keras_io import save_keras
from tlpipe.training.augment import (
    steps_per_epoch,
    streamed_batches,
    streamed_eval_batches,
)
from tlpipe.training.data import config_json
from tlpipe.training.loop import EpochData, LoopResult, run_epochs
from tlpipe.training.optim import compile_model, make_optimizer
from tlpipe.training.reports import write_reports

if TYPE_CHECKING:
    from tlpipe.config.params import Params
    from tlpipe.config.training import AugmentParams, PhaseParams
    from tlpipe.model.classifier import Classifier, ModelSpec
    from tlpipe.runtime import Runtime, Stopwatch
    from tlpipe.training.backups import Backups

log = logging.getLogger(__spec__.name)


def fit(
    target: Any,
    p: PhaseParams,
    rt: Runtime,
    *,
    phase: str,
    train: Records,
    val: Records,
    num_classes: int,
    seed: int,
    log_every: float,
    callbacks: Sequence[Any] = (),
    steps: int | None = None,
    learning_rate: Any = None,
    augment: AugmentParams | None = None,
    backups: Backups | None = None,
    backup_every_steps: int = 0,
    keep_last: bool = False,
) -> LoopResult:
    """Compile `target` (under the strategy) and train it on the `train` records (images or
    features, streamed from their shards: tlpipe.training.augment.streamed_batches) for p.epochs
    epochs, validating on `val`; it ends holding its best epoch's weights (its last, `keep_last`).

    `steps` per epoch: the whole split by default; `learning_rate`: p.learning_rate by default (a
    schedule over `steps`, for instance)."""
    with rt.strategy.scope():
        rate = p.learning_rate if learning_rate is None else learning_rate
        optimizer = make_optimizer(p.optimizer, rate, weight_decay=p.weight_decay, momentum=p.momentum)
        compile_model(target, optimizer, label_smoothing=p.label_smoothing, jit_compile=rt.jit_compile)
    steps = steps or steps_per_epoch(train.count, p.batch_size)
    data = EpochData(
        make=lambda epoch: streamed_batches(
            train, num_classes, batch_size=p.batch_size, seed=seed, epoch=epoch, augment=augment, steps=steps
        ),
        steps=steps,
        samples=steps * p.batch_size,
    )
    return run_epochs(
        target,
        train=data,
        val=streamed_eval_batches(val, num_classes, p.batch_size),
        epochs=p.epochs,
        early_stopping=p.early_stopping,
        batch_size=p.batch_size,
        phase=phase,
        label_smoothing=p.label_smoothing,
        jit_compile=rt.jit_compile,
        backups=backups,
        backup_every_steps=backup_every_steps,
        log_every=log_every,
        callbacks=callbacks,
        keep_last=keep_last,
    )


def save_and_report(
    phase: str,
    clf: Classifier,
    spec: ModelSpec,
    result: LoopResult,
    rt: Runtime,
    params: Params,
    *,
    model_path: Path,
    reports: Path,
    clock: Stopwatch,
    extra: dict[str, Any],
    timings: dict[str, Any],
) -> dict[str, Any]:
    """The chief's part: the model as float32 at `model_path`, and reports/<phase>/; the metrics."""
    save_keras(rebuild_float32(spec, clf.model), model_path)
    return write_reports(
        reports,
        result,
        extra=extra,
        timings={"total_seconds": round(clock.elapsed, 2), **timings, **rt.machine()},
        texts={"summary.txt": summary_text(clf.model), "config.json": config_json(spec, rt.settings(), params)},
    )


def log_done(phase: str, metrics: dict[str, Any], result: LoopResult, model_path: Path, clock: Stopwatch) -> None:
    log.info(
        "%s: best val_accuracy %.4f at epoch %d of %d; %s written in %.0fs",
        phase,
        metrics["best"]["val_accuracy"],
        result.best_epoch,
        len(result.history),
        model_path,
        clock.elapsed,
    )
