"""train stage: a classifier head on a frozen ImageNet backbone.

The backbone's pooled features are computed once per (backbone, weights, size, data) and cached
(tlpipe.training.features); the head then trains on the cache, in seconds instead of a backbone forward
pass per image per epoch. `train.cache_features: false` trains the same model through the frozen
backbone instead (tests/test_train.py checks both give the same weights).

Reads data/prepared; writes models/head.keras (the full model: raw pixels in, probabilities out,
backbone frozen) and reports/train/ (tlpipe.training.reports).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stages.cli import run_stage
from tlpipe.config.model import ModelParams
from tlpipe.config.runtime import RuntimeParams
from tlpipe.config.train import TrainParams
from tlpipe.model.classifier import build_classifier, rebuild_float32, resolve_spec, summary_text
from tlpipe.model.keras_io import save_keras
from tlpipe.paths import Paths
from tlpipe.runtime import Stopwatch, configure, is_chief
from tlpipe.training.augment import eval_batches, steps_per_epoch, training_batches
from tlpipe.training.data import config_json, load_training_data, one_hot
from tlpipe.training.features import cache_dir, cache_file, cached_features
from tlpipe.training.loop import EpochData, run_epochs
from tlpipe.training.optim import compile_model, make_optimizer
from tlpipe.training.reports import write_reports

if TYPE_CHECKING:
    from tlpipe.config.params import Params

log = logging.getLogger(__spec__.name)  # its import name, never __main__


def run(params: Params, paths: Paths, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the head; returns the metrics written to reports/train/metrics.json.

    `callbacks`: extra Keras callbacks (a flow's progress reporter, a test's interruption).
    """
    clock = Stopwatch()
    info, (x_train, y_train), (x_val, y_val) = load_training_data(paths)
    # Everything a user can get wrong is checked before the first heavy step.
    spec = resolve_spec(params, tuple(info.image_shape), info.num_classes, paths)
    tp = params.train
    rt = configure(params)
    log_every = params.runtime.log_every_seconds
    log.info(
        "train: %s at %d px (data %s), weights %s, %d classes, %d train / %d val images",
        spec.backbone.name,
        spec.image_size,
        "×".join(map(str, spec.input_shape)),
        spec.describe()["weights"],
        spec.num_classes,
        len(x_train),
        len(x_val),
    )
    with rt.strategy.scope():
        clf = build_classifier(spec)

    features: dict[str, Any] = {"cached": int(tp.cache_features)}
    timings: dict[str, Any] = {}
    if tp.cache_features:
        directory = cache_dir(paths.features, spec, rt.policy)
        describe = {**spec.describe(), "weights_id": spec.weights_id, "policy": rt.policy}
        t = Stopwatch()
        hits = []
        inputs = {}
        for split, x in (("train", x_train), ("val", x_val)):
            path = cache_file(directory, split, info.fingerprints.get(split, "nofp"))
            inputs[split], hit = cached_features(
                clf.extractor, x, path=path, describe=describe, batch_size=tp.feature_batch_size, log_every=log_every
            )
            hits.append(hit)
        features["dim"] = clf.num_features
        timings["features"] = {"cache_hit": int(all(hits)), "seconds": round(t.elapsed, 2)}
        inputs_train, inputs_val, target = inputs["train"], inputs["val"], clf.head
    else:
        inputs_train, inputs_val, target = x_train, x_val, clf.model

    onehot_train = one_hot(y_train, spec.num_classes)
    onehot_val = one_hot(y_val, spec.num_classes)
    with rt.strategy.scope():
        optimizer = make_optimizer(tp.optimizer, tp.learning_rate, weight_decay=tp.weight_decay, momentum=tp.momentum)
        compile_model(target, optimizer, label_smoothing=tp.label_smoothing, jit_compile=rt.jit_compile)
    steps = steps_per_epoch(len(inputs_train), tp.batch_size)
    data = EpochData(
        make=lambda epoch: training_batches(
            inputs_train, onehot_train, batch_size=tp.batch_size, seed=params.seed, epoch=epoch, steps=steps
        ),
        steps=steps,
        samples=steps * tp.batch_size,
    )
    result = run_epochs(
        target,
        train=data,
        val=eval_batches(inputs_val, onehot_val, tp.batch_size),
        epochs=tp.epochs,
        early_stopping=tp.early_stopping,
        batch_size=tp.batch_size,
        phase="train",
        log_every=log_every,
        callbacks=callbacks,
    )
    if not is_chief():
        return {}
    save_keras(rebuild_float32(spec, clf.model), paths.head_model)
    metrics = write_reports(
        paths.reports("train"),
        result,
        extra={"image_size": spec.image_size, "features": features},
        timings={"total_seconds": round(clock.elapsed, 2), **timings, **rt.machine()},
        texts={"summary.txt": summary_text(clf.model), "config.json": config_json(spec, rt.settings(), params)},
    )
    log.info(
        "train: best val_accuracy %.4f at epoch %d of %d; %s written in %.0fs",
        metrics["best"]["val_accuracy"],
        result.best_epoch,
        len(result.history),
        paths.head_model,
        clock.elapsed,
    )
    return metrics


def main() -> None:
    run_stage(run, ModelParams, TrainParams, RuntimeParams)


if __name__ == "__main__":
    main()
