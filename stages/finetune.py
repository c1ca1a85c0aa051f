"""finetune stage: from the trained head, unfreeze the top of the backbone and train end to end.

Starts from models/head.keras; unfreezes what finetune.unfreeze names (top layers, top blocks,
everything from a named block, or from a layer index; tlpipe.model.unfreeze), keeps every BatchNorm
frozen, and trains with augmentation at a lower learning rate (linear warmup, then cosine decay
or constant) with early stopping. The best epoch's weights are kept on disk, and a resumable
backup is written every finetune.backup_every_steps steps and at every epoch end
(tlpipe.training.backups): rerunning after a kill continues from the last backup. Writes
models/model.keras (float32, raw pixels in, probabilities out) and reports/finetune/.

finetune.enabled: false makes models/model.keras a copy of the head model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stages.cli import run_stage
from tlpipe.config.finetune import FinetuneParams
from tlpipe.config.load import RESULT_NEUTRAL_KEYS
from tlpipe.config.model import ModelParams
from tlpipe.config.runtime import RuntimeParams
from tlpipe.data.records import concat
from tlpipe.model.classifier import build_classifier, resolve_spec, with_weights
from tlpipe.model.unfreeze import unfreeze
from tlpipe.paths import Paths
from tlpipe.runtime import Stopwatch, configure, is_chief
from tlpipe.training.augment import steps_per_epoch
from tlpipe.training.backups import Backups
from tlpipe.training.data import load_training_data
from tlpipe.training.optim import warmup_cosine
from tlpipe.training.phase import fit, log_done, save_and_report
from tlpipe.training.reports import TIMINGS_FILE
from tlpipe.util.atomic import atomic_dir, atomic_file, json_text, write_json
from tlpipe.util.errors import DataError, first_line
from tlpipe.util.hashing import sha256_file

if TYPE_CHECKING:
    from tlpipe.config.params import Params

log = logging.getLogger(__spec__.name)  # its import name, never __main__


def run(params: Params, paths: Paths, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Fine-tune; returns the metrics written to reports/finetune/metrics.json.

    `callbacks`: extra Keras callbacks (a flow's progress reporter, a test's interruption).
    """
    clock = Stopwatch()
    if not paths.head_model.is_file():
        raise DataError(f"{paths.head_model}: not found; run the train stage first (dvc repro train)")
    fp = params.finetune
    if not fp.enabled:
        return _copy_head(paths)
    info, train_records, val_records = load_training_data(paths)
    if fp.train_on_val:  # the final fit: validation images join the training images
        train_records = concat("train+val", [train_records, val_records])
    spec = resolve_spec(params, tuple(info.image_shape), info.num_classes, paths)
    rt = configure(params)
    with rt.strategy.scope():
        # The head model file holds every weight: no ImageNet download or file read here.
        clf = build_classifier(with_weights(spec, None))
        try:
            clf.model.load_weights(paths.head_model)
        except Exception as err:  # noqa: BLE001 - shape/count mismatches surface as ValueError or KeyError
            raise ValueError(
                f"{paths.head_model} does not match the current params (backbone {spec.backbone.name!r}, "
                f"{spec.image_size} px, {spec.num_classes} classes): rerun the train stage ({first_line(err)})"
            ) from None
        unfrozen = unfreeze(clf.backbone, spec.backbone, fp.unfreeze)
    log.info(
        "finetune: %s at %d px, %d of %d backbone layers trainable (from block %s, %d blocks), BatchNorm frozen",
        spec.backbone.name,
        spec.image_size,
        unfrozen["layers"],
        unfrozen["of_layers"],
        unfrozen["first_block"] or "-",
        unfrozen["blocks"],
    )

    steps = steps_per_epoch(train_records.count, fp.batch_size, fp.steps_per_epoch)
    schedule = warmup_cosine(
        fp.learning_rate,
        total_steps=steps * fp.epochs,
        warmup_steps=int(round(fp.schedule.warmup_epochs * steps)),
        min_learning_rate=fp.schedule.min_learning_rate,
        constant=fp.schedule.kind == "constant",
    )
    chief = is_chief()
    backups = Backups(paths.checkpoints / "finetune", key=run_key(params, paths, info.fingerprints), enabled=chief)
    result = fit(
        clf.model,
        fp,
        rt,
        phase="finetune",
        train=train_records,
        val=val_records,
        num_classes=spec.num_classes,
        seed=params.seed,
        log_every=params.runtime.log_every_seconds,
        callbacks=callbacks,
        steps=steps,
        learning_rate=schedule,
        augment=fp.augment,
        backups=backups,
        backup_every_steps=fp.backup_every_steps,
        keep_last=fp.train_on_val,
    )
    if not chief:  # a non-chief worker of a multi-worker cluster: the chief writes everything
        return {}
    metrics = save_and_report(
        "finetune",
        clf,
        spec,
        result,
        rt,
        params,
        model_path=paths.model,
        reports=paths.reports("finetune"),
        clock=clock,
        extra={"enabled": 1, "image_size": spec.image_size, "train_on_val": int(fp.train_on_val), "unfrozen": unfrozen},
        timings={},
    )
    backups.clear()  # only once model.keras and the reports are in place
    log_done("finetune", metrics, result, paths.model, clock)
    return metrics


def _copy_head(paths: Paths) -> dict[str, Any]:
    """finetune disabled: model.keras is the head model; the reports say so and carry its val scores."""
    with atomic_file(paths.model) as tmp:
        shutil.copyfile(paths.head_model, tmp)
    train_metrics = paths.reports("train") / "metrics.json"
    best = json.loads(train_metrics.read_text()).get("best", {}) if train_metrics.is_file() else {}
    metrics = {"enabled": 0, "best": best}
    with atomic_dir(paths.reports("finetune")) as tmp:
        write_json(tmp / "metrics.json", metrics)
        (tmp / TIMINGS_FILE).write_text(json_text({"seconds": 0.0}))
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


def run_key(params: Params, paths: Paths, fingerprints: dict[str, str]) -> str:
    """What a backup belongs to: the params that shape training, the head it started from, the data."""
    raw = {
        "params": params.model_dump(include={"seed", "backbone", "model", "finetune", "runtime"}, by_alias=True),
        "head": sha256_file(paths.head_model),
        "data": fingerprints,
    }
    for key in RESULT_NEUTRAL_KEYS:  # how often to back up or log changes nothing
        section, name = key.split(".")
        raw["params"].get(section, {}).pop(name, None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]


def main() -> None:
    run_stage(run, ModelParams, FinetuneParams, RuntimeParams)


if __name__ == "__main__":
    main()
