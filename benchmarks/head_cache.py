"""Benchmark: one head-training epoch on cached features vs one epoch through the frozen backbone.

Real data (data/prepared, from the ingest stage) and the real MobileNetV2 α=1.0 ImageNet weights
(../shared/weights), at the image size params.yaml resolves (96 px in the CPU preset). Both
epochs run the same head, optimizer, batch size and batches (tlpipe.training.augment), through the same
code the train stage uses; each is timed after a warm-up step, so tracing is not counted. The
one-off cost of filling the cache (a backbone forward pass over the split) is printed too.

    python benchmarks/head_cache.py                  # the whole train split
    python benchmarks/head_cache.py --limit 8000     # a quicker look

Prints figures; it is not a test and asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tlpipe.config.params import load_params, with_overrides
from tlpipe.paths import Paths

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"


def timed_epoch(model, dataset_for) -> float:
    """Seconds for one epoch of `steps` batches; a 1-step fit first traces the train function."""
    model.fit(dataset_for(0).take(1), verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(dataset_for(1), verbose=0, shuffle=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N train images")
    parser.add_argument("--weights", default=str(SHARED_WEIGHTS))
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    from tlpipe.data.dataset import load_info, load_split
    from tlpipe.data.records import write_records
    from tlpipe.model.classifier import build_classifier, resolve_spec
    from tlpipe.runtime import configure
    from tlpipe.training.augment import steps_per_epoch, training_batches
    from tlpipe.training.data import one_hot
    from tlpipe.training.features import compute_features
    from tlpipe.training.optim import compile_model, make_optimizer

    paths = Paths()
    params = with_overrides(
        load_params(args.params), backbone="mobilenetv2", model={"weights": args.weights, "alpha": 1.0}
    )
    info = load_info(paths.prepared)
    spec = resolve_spec(params, tuple(info.image_shape), info.num_classes, paths)
    x, y = load_split(paths.prepared, "train")
    if args.limit:
        x, y = x[: args.limit], y[: args.limit]
    configure(params)  # seeds, op determinism, float32
    tp = params.train
    bs = tp.batch_size
    steps = steps_per_epoch(len(x), bs)
    labels = one_hot(y, info.num_classes)
    print(
        f"MobileNetV2 α=1.0 ({Path(args.weights).name}) at {spec.image_size} px, {len(x)} train images "
        f"of {'×'.join(map(str, info.image_shape))}, batch {bs}, {steps} steps/epoch, {os.cpu_count()} CPUs"
    )

    clf = build_classifier(spec)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        images = write_records(Path(tmp), "train", x, y)
        (Path(tmp) / "features").mkdir()
        out = Path(tmp) / "features"
        written = compute_features(clf.extractor, images, out, tp.feature_batch_size, "cache fill", 1e9)
        fill = time.perf_counter() - start
        feats, _ = written.load()
    print(
        f"cache fill (one backbone pass):   {fill:8.1f} s  {len(x) / fill:8.0f} img/s  ({feats.shape[1]} features/img)"
    )

    optimizer = make_optimizer(tp.optimizer, tp.learning_rate, weight_decay=0.0, momentum=tp.momentum)
    compile_model(clf.head, optimizer, label_smoothing=0.0, jit_compile=False)
    cached = timed_epoch(
        clf.head, lambda e: training_batches(feats, labels, batch_size=bs, seed=params.seed, epoch=e, steps=steps)
    )
    print(f"head epoch on cached features:    {cached:8.2f} s  {steps * bs / cached:8.0f} img/s")

    optimizer = make_optimizer(tp.optimizer, tp.learning_rate, weight_decay=0.0, momentum=tp.momentum)
    compile_model(clf.model, optimizer, label_smoothing=0.0, jit_compile=False)
    frozen = timed_epoch(
        clf.model, lambda e: training_batches(x, labels, batch_size=bs, seed=params.seed, epoch=e, steps=steps)
    )
    print(f"head epoch through frozen backbone:{frozen:8.2f} s  {steps * bs / frozen:8.0f} img/s")
    print(f"speedup per epoch: {frozen / cached:.1f}x (target >= 20x)")
    n = tp.epochs
    print(
        f"cache fill + one cached epoch = {(fill + cached) / frozen:.2f} frozen-backbone epochs; "
        f"{n} head epochs (train.epochs): {fill + n * cached:.0f} s with the cache vs {n * frozen:.0f} s without"
    )


if __name__ == "__main__":
    main()
