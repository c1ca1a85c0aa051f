"""finetune stage: from the trained head, unfreeze the top of the backbone and train end to end.

Starts from models/head.keras; unfreezes what finetune.unfreeze names (top layers, top blocks,
everything from a named block, or from a layer index), keeps every BatchNorm frozen, and trains
with augmentation at a lower learning rate (linear warmup, then cosine decay or constant) with
early stopping. The best epoch's weights are kept on disk, and a resumable backup is written
every finetune.backup_every_steps steps and at every epoch end in data/checkpoints/finetune/:
rerunning after a kill continues from the last backup (stages.fit). Writes models/model.keras
(float32, raw pixels in, probabilities out) and reports/finetune/.

finetune.enabled: false makes models/model.keras a copy of the head model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from typing import Any

from stages.atomic import atomic_file, write_json
from stages.augment import eval_batches, steps_per_epoch, training_batches
from stages.dataset import DataError, load_info, load_split
from stages.fit import Backups, EpochData, compile_model, make_optimizer, run_epochs, warmup_cosine, write_reports
from stages.model import (
    _file_sha256,
    build_classifier,
    rebuild_float32,
    resolve_spec,
    summary_text,
    unfreeze,
    with_weights,
)
from stages.params import Params
from stages.paths import Paths
from stages.runtime import Stopwatch, configure
from stages.train import config_json, one_hot, save_model

log = logging.getLogger("stages.finetune")  # not __main__ under python -m


def run(params: Params, paths: Paths, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune; returns the metrics written to reports/finetune/metrics.json.

    `callbacks`: extra Keras callbacks (a flow's progress reporter, a test's interruption).
    """
    clock = Stopwatch()
    if not paths.head_model.is_file():
        raise DataError(f"{paths.head_model}: not found; run the train stage first (dvc repro train)")
    info = load_info(paths.prepared)
    spec = resolve_spec(params, tuple(info.image_shape), info.num_classes, paths.root)
    fp = params.finetune
    if not fp.enabled:
        return _copy_head(params, paths)

    x_train, y_train = load_split(paths.prepared, "train", mmap=False)
    x_val, y_val = load_split(paths.prepared, "val", mmap=False)
    if len(x_train) == 0 or len(x_val) == 0:
        raise DataError(f"{paths.prepared}: the train and val splits must not be empty ({len(x_train)}, {len(x_val)})")
    rt = configure(params)
    with rt.strategy.scope():
        # The head model file holds every weight: no ImageNet download or file read here.
        clf = build_classifier(with_weights(spec, None))
        try:
            clf.model.load_weights(paths.head_model)
        except Exception as err:  # shape/count mismatches surface as ValueError or KeyError
            raise ValueError(
                f"{paths.head_model} does not match the current params (backbone {spec.backbone.name!r}, "
                f"{spec.image_size} px, {spec.num_classes} classes): rerun the train stage ({_first_line(err)})"
            ) from None
        unfrozen = unfreeze(clf.backbone, spec.backbone, fp.unfreeze)
    log.info(
        "finetune: %s at %d px, %d of %d backbone layers trainable (from block %s, %d blocks), BatchNorm frozen",
        spec.backbone.name, spec.image_size, unfrozen["layers"], unfrozen["of_layers"], unfrozen["first_block"] or "-",
        unfrozen["blocks"],
    )  # fmt: skip

    steps = steps_per_epoch(len(x_train), fp.batch_size, fp.steps_per_epoch)
    total = steps * fp.epochs
    schedule = warmup_cosine(
        fp.learning_rate, total, int(round(fp.schedule.warmup_epochs * steps)), fp.schedule.min_learning_rate,
        constant=fp.schedule.kind == "constant",
    )  # fmt: skip
    with rt.strategy.scope():
        optimizer = make_optimizer(fp.optimizer, schedule, fp.weight_decay, fp.momentum)
        compile_model(clf.model, optimizer, fp.label_smoothing, rt.jit_compile)

    onehot_train = one_hot(y_train, spec.num_classes)
    data = EpochData(
        make=lambda epoch: training_batches(x_train, onehot_train, fp.batch_size, params.seed, epoch, fp.augment, steps),
        steps=steps,
        samples=steps * fp.batch_size,
    )
    backups = Backups(paths.checkpoints / "finetune", key=_run_key(params, paths, info.fingerprints))
    result = run_epochs(
        clf.model, data, eval_batches(x_val, one_hot(y_val, spec.num_classes), fp.batch_size), fp.epochs,
        fp.early_stopping, fp.batch_size, "finetune", backups=backups, backup_every_steps=fp.backup_every_steps,
        log_every=params.runtime.log_every_seconds, callbacks=callbacks,
    )  # fmt: skip

    save_model(rebuild_float32(spec, clf.model), paths.model)
    extra = {
        "enabled": 1,
        "image_size": spec.image_size,
        "unfrozen": unfrozen,
        "resumed": int(result.resumed_from is not None),
        "total_seconds": round(clock.elapsed, 2),
    }
    metrics = write_reports(
        paths.reports("finetune"), result, extra,
        {"summary.txt": summary_text(clf.model), "config.json": config_json(spec, rt.describe(), params)},
    )  # fmt: skip
    backups.clear()  # only once model.keras and the reports are in place
    log.info(
        "finetune: best val_accuracy %.4f at epoch %d of %d; %s written in %.0fs",
        metrics["best"]["val_accuracy"], result.best_epoch, len(result.history), paths.model, clock.elapsed,
    )  # fmt: skip
    return metrics


def _copy_head(params: Params, paths: Paths) -> dict[str, Any]:
    """finetune disabled: model.keras is the head model; the reports say so and carry its val scores."""
    from stages.atomic import atomic_dir

    with atomic_file(paths.model) as tmp:
        shutil.copyfile(paths.head_model, tmp)
    train_metrics = paths.reports("train") / "metrics.json"
    best = json.loads(train_metrics.read_text()).get("best", {}) if train_metrics.is_file() else {}
    metrics = {"enabled": 0, "best": best}
    with atomic_dir(paths.reports("finetune")) as tmp:
        write_json(tmp / "metrics.json", metrics)
        # The model is the head: its curves are the head's (and DVC finds the declared plots).
        train_plots = paths.reports("train") / "plots"
        if train_plots.is_dir():
            shutil.copytree(train_plots, tmp / "plots")
        else:
            (tmp / "plots" / "metrics").mkdir(parents=True)
        (tmp / "summary.txt").write_text("finetune disabled: models/model.keras is models/head.keras\n")
        (tmp / "config.json").write_text(json.dumps({"enabled": False}) + "\n")
    log.info("finetune: disabled; %s is a copy of %s", paths.model, paths.head_model)
    return metrics


def _run_key(params: Params, paths: Paths, fingerprints: dict[str, str]) -> str:
    """What a backup belongs to: the params that shape training, the head it started from, the data."""
    raw = {
        "params": params.model_dump(include={"seed", "backbone", "model", "finetune", "runtime"}, by_alias=True),
        "head": _file_sha256(paths.head_model),
        "data": fingerprints,
    }
    raw["params"]["finetune"].pop("backup_every_steps", None)  # how often to back up changes nothing
    raw["params"]["runtime"].pop("log_every_seconds", None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def main() -> None:
    from stages.cli import run_stage

    run_stage(run)


if __name__ == "__main__":
    main()
