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
from tlpipe.model.classifier import build_classifier, resolve_spec
from tlpipe.paths import Paths
from tlpipe.runtime import Stopwatch, configure, is_chief
from tlpipe.training.data import load_training_data
from tlpipe.training.features import cache_dir, cache_file, cached_features
from tlpipe.training.phase import fit, log_done, save_and_report

if TYPE_CHECKING:
    from tlpipe.config.params import Params

log = logging.getLogger(__spec__.name)  # its import name, never __main__


def run(params: Params, paths: Paths, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train the head; returns the metrics written to reports/train/metrics.json.

    `callbacks`: extra Keras callbacks (a flow's progress reporter, a test's interruption).
    """
    clock = Stopwatch()
    info, train_records, val_records = load_training_data(paths)
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
        train_records.count,
        val_records.count,
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
        for split, x in (("train", train_records), ("val", val_records)):
            path = cache_file(directory, split, info.fingerprints.get(split, "nofp"))
            inputs[split], hit = cached_features(
                clf.extractor, x, path=path, describe=describe, batch_size=tp.feature_batch_size, log_every=log_every
            )
            hits.append(hit)
        features["dim"] = clf.num_features
        timings["features"] = {"cache_hit": int(all(hits)), "seconds": round(t.elapsed, 2)}
        inputs_train, inputs_val, target = inputs["train"], inputs["val"], clf.head
    else:
        inputs_train, inputs_val, target = train_records, val_records, clf.model

    result = fit(
        target,
        tp,
        rt,
        phase="train",
        train=inputs_train,
        val=inputs_val,
        num_classes=spec.num_classes,
        seed=params.seed,
        log_every=log_every,
        callbacks=callbacks,
    )
    if not is_chief():
        return {}
    metrics = save_and_report(
        "train",
        clf,
        spec,
        result,
        rt,
        params,
        model_path=paths.head_model,
        reports=paths.reports("train"),
        clock=clock,
        extra={"image_size": spec.image_size, "features": features},
        timings=timings,
    )
    log_done("train", metrics, result, paths.head_model, clock)
    return metrics


def main() -> None:
    run_stage(run, ModelParams, TrainParams, RuntimeParams)


if __name__ == "__main__":
    main()
