"""train stage: a classifier head on a frozen ImageNet backbone.

The backbone's pooled features are computed once per (backbone, weights, size, data) and cached
in data/features/ (stages.features); the head then trains on the cache, in seconds instead of a
backbone forward pass per image per epoch. `train.cache_features: false` trains the same model
through the frozen backbone instead (tests/test_train.py checks both give the same weights).

Reads data/prepared; writes models/head.keras (the full model: raw pixels in, probabilities out,
backbone frozen) and reports/train/ (dvclive metrics and per-epoch plots, model summary, config).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from stages.atomic import atomic_file
from stages.augment import eval_batches, steps_per_epoch, training_batches
from stages.dataset import DataError, load_info, load_split
from stages.features import cache_dir, cached_features
from stages.fit import EpochData, compile_model, make_optimizer, run_epochs, write_reports
from stages.model import ModelSpec, build_classifier, rebuild_float32, resolve_spec, summary_text
from stages.params import Params
from stages.paths import Paths
from stages.runtime import Stopwatch, configure

log = logging.getLogger("stages.train")  # not __main__ under python -m


def run(params: Params, paths: Paths, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the head; returns the metrics written to reports/train/metrics.json.

    `callbacks`: extra Keras callbacks (a flow's progress reporter, a test's interruption).
    """
    clock = Stopwatch()
    info = load_info(paths.prepared)
    # Everything a user can get wrong is checked before the first heavy step.
    spec = resolve_spec(params, tuple(info.image_shape), info.num_classes, paths.root)
    tp = params.train
    x_train, y_train = load_split(paths.prepared, "train", mmap=False)
    x_val, y_val = load_split(paths.prepared, "val", mmap=False)
    if len(x_train) == 0 or len(x_val) == 0:
        raise DataError(f"{paths.prepared}: the train and val splits must not be empty ({len(x_train)}, {len(x_val)})")
    rt = configure(params)
    log.info(
        "train: %s at %d px (data %s), weights %s, %d classes, %d train / %d val images",
        spec.backbone.name, spec.image_size, "×".join(map(str, spec.input_shape)), spec.weights or "none",
        spec.num_classes, len(x_train), len(x_val),
    )  # fmt: skip
    with rt.strategy.scope():
        clf = build_classifier(spec)

    features_info: dict[str, Any] = {"cached": int(tp.cache_features)}
    if tp.cache_features:
        directory = cache_dir(paths.features, spec, rt.policy)
        t = Stopwatch()
        inputs_train, hit_train = cached_features(
            clf.extractor, x_train, info.fingerprints.get("train", "nofp"), directory, spec, rt.policy, "train",
            tp.feature_batch_size, params.runtime.log_every_seconds,
        )  # fmt: skip
        inputs_val, hit_val = cached_features(
            clf.extractor, x_val, info.fingerprints.get("val", "nofp"), directory, spec, rt.policy, "val",
            tp.feature_batch_size, params.runtime.log_every_seconds,
        )  # fmt: skip
        features_info.update(cache_hit=int(hit_train and hit_val), seconds=round(t.elapsed, 2), dim=clf.num_features)
        target = clf.head
    else:
        inputs_train, inputs_val = x_train, x_val
        target = clf.model

    onehot_train = one_hot(y_train, spec.num_classes)
    onehot_val = one_hot(y_val, spec.num_classes)
    with rt.strategy.scope():
        optimizer = make_optimizer(tp.optimizer, tp.learning_rate, tp.weight_decay, tp.momentum)
        compile_model(target, optimizer, tp.label_smoothing, rt.jit_compile)
    steps = steps_per_epoch(len(inputs_train), tp.batch_size)
    data = EpochData(
        make=lambda epoch: training_batches(inputs_train, onehot_train, tp.batch_size, params.seed, epoch, None, steps),
        steps=steps,
        samples=steps * tp.batch_size,
    )
    result = run_epochs(
        target, data, eval_batches(inputs_val, onehot_val, tp.batch_size), tp.epochs, tp.early_stopping,
        tp.batch_size, "train", log_every=params.runtime.log_every_seconds, callbacks=callbacks,
    )  # fmt: skip

    save_model(rebuild_float32(spec, clf.model), paths.head_model)
    extra = {
        "image_size": spec.image_size,
        "features": features_info,
        "total_seconds": round(clock.elapsed, 2),
    }
    metrics = write_reports(
        paths.reports("train"), result, extra,
        {"summary.txt": summary_text(clf.model), "config.json": config_json(spec, rt.describe(), params)},
    )  # fmt: skip
    log.info(
        "train: best val_accuracy %.4f at epoch %d of %d; %s written in %.0fs",
        metrics["best"]["val_accuracy"], result.best_epoch, len(result.history), paths.head_model, clock.elapsed,
    )  # fmt: skip
    return metrics


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    labels = np.asarray(labels, np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"labels outside 0..{num_classes - 1}: min {labels.min()}, max {labels.max()}")
    return np.eye(num_classes, dtype=np.float32)[labels]


def save_model(model: Any, path: Any) -> None:
    """Whole or not at all: Keras writes a temporary .keras file that is renamed into place."""
    with atomic_file(path) as tmp:
        model.save(tmp)


def config_json(spec: ModelSpec, runtime: dict[str, Any], params: Params) -> str:
    return (
        json.dumps(
            {
                "model": {**spec.describe(), "weights_id": spec.weights_id, "num_classes": spec.num_classes},
                "runtime": runtime,
                "seed": params.seed,
            },
            indent=2,
        )
        + "\n"
    )


def main() -> None:
    from stages.cli import run_stage

    run_stage(run)


if __name__ == "__main__":
    main()
