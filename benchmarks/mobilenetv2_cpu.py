"""Performance figures of the pipeline's MobileNetV2 model on this machine, through the real stages.

    python -m stages.ingest                    # data/prepared from ../shared (once)
    python benchmarks/mobilenetv2_cpu.py --size 224
    python benchmarks/mobilenetv2_cpu.py --size 224 --skip-build --set export.int8.format=qoperator

1. Builds the pipeline's classifier (tlpipe.model.classifier.build_classifier: 32×32 uint8-valued input,
   in-model resize to --size, MobileNetV2 preprocessing, MobileNetV2 α=1.0 with the ImageNet
   weights in ../shared/weights, average pooling, softmax head) and trains its head for a few
   epochs on backbone features of --train-images train images, so accuracies mean something.
   No fine-tuning: the figures are about export and speed, not about the best accuracy.
2. Runs the export stage (parity, fp16, int8 scored on --eval-images test images) and the
   benchmark stage, as `python -m stages.<name>` in a scratch project under --workdir whose
   data/prepared is a link to this project's, exactly as DVC would run them.
3. Prints the variant accuracies and the throughput table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
WEIGHTS = REPO.parent / "shared" / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"


def parse_set(items: list[str]) -> dict:
    """--set a.b.c=value (value parsed as YAML) into a nested dict."""
    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        node = out
        *parents, leaf = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = yaml.safe_load(value)
    return out


def build(root: Path, params, train_images: int, epochs: int) -> None:
    import keras
    import numpy as np

    from tlpipe.data.dataset import load_info, load_split
    from tlpipe.model.classifier import build_classifier, resolve_spec
    from tlpipe.model.keras_io import save_keras
    from tlpipe.paths import Paths

    info = load_info(root / "data" / "prepared")
    spec = resolve_spec(params, tuple(info.image_shape), info.num_classes, Paths(root))
    clf = build_classifier(spec)
    x, y = load_split(root / "data" / "prepared", "train")
    # Shuffled, not sorted: the split is ordered by class and validation_split takes the tail.
    idx = np.random.default_rng(0).permutation(len(x))[:train_images]
    t0 = time.perf_counter()
    feats = np.concatenate(
        [clf.extractor.predict_on_batch(np.asarray(x[idx[i : i + 64]], np.float32)) for i in range(0, len(idx), 64)]
    )
    print(f"features of {len(idx)} train images at {spec.image_size}px: {time.perf_counter() - t0:.1f}s", flush=True)
    clf.head.compile(
        optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    hist = clf.head.fit(feats, np.asarray(y)[idx], epochs=epochs, batch_size=128, verbose=0, validation_split=0.1)
    print(
        f"head: train acc {hist.history['accuracy'][-1]:.3f}, held-out acc {hist.history['val_accuracy'][-1]:.3f}",
        flush=True,
    )
    (root / "models").mkdir(exist_ok=True)
    save_keras(clf.model, root / "models" / "model.keras")


def stage(root: Path, name: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"stages.{name}"], cwd=root, env=env, check=True)
    print(f"{name}: {time.perf_counter() - t0:.0f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224, help="backbone input side (the model resizes 32px to this)")
    ap.add_argument("--train-images", type=int, default=3000)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--eval-images", type=int, default=2000, help="test images the export variants are scored on")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/tlpipe-bench"))
    ap.add_argument("--skip-build", action="store_true", help="reuse the workdir's model.keras")
    ap.add_argument("--skip-export", action="store_true", help="reuse the workdir's ONNX models")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override, e.g. export.int8.per_channel=false",
    )
    args = ap.parse_args()

    from tlpipe.config.params import load_params, with_overrides

    root = args.workdir / f"mobilenetv2_{args.size}"
    (root / "data").mkdir(parents=True, exist_ok=True)
    link = root / "data" / "prepared"
    if not link.exists():
        link.symlink_to(REPO / "data" / "prepared")
    overrides = {
        "backbone": "mobilenetv2",
        "model": {"weights": str(WEIGHTS), "alpha": 1.0, "image_size": args.size},
        "export": {"eval_images": args.eval_images},
    }
    params = with_overrides(load_params(REPO / "params.yaml"), **overrides)
    extra = parse_set(args.set)
    if extra:
        params = with_overrides(params, **extra)
    (root / "params.yaml").write_text(yaml.safe_dump(params.model_dump(by_alias=True, mode="json"), sort_keys=False))

    if not args.skip_build:
        build(root, params, args.train_images, args.epochs)
    if not args.skip_export:
        stage(root, "export")
    stage(root, "benchmark")

    exported = json.loads((root / "reports" / "export" / "metrics.json").read_text())
    print(f"\nVariants, top-1 on {exported['eval_images']} test images (parity: {exported['parity']}):")
    print("| variant | accuracy | drop (points) | top-1 agreement with fp32 | max abs diff | size MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, v in exported["variants"].items():
        print(
            f"| {name} | {100 * v['accuracy']:.2f} % | {v['accuracy_drop_points']:.2f} | {v['top1_agreement']:.4f} "
            f"| {v['max_abs_diff']:.4f} | {v['size_mb']} |"
        )
    print()
    print((root / "reports" / "benchmark" / "results.md").read_text())
    print(json.dumps(json.loads((root / "reports" / "benchmark" / "metrics.json").read_text())["speedup"]))


if __name__ == "__main__":
    main()
