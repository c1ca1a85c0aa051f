"""INT8 options compared on one exported model: accuracy against float32 and CPU throughput.

    python benchmarks/int8_options.py /tmp/tlpipe-bench/mobilenetv2_224

Uses the export stage's own `to_int8` (onnxruntime.quantization.quantize_static) with each
combination below, calibrated on train images, scored on test images, and timed with the
benchmark stage's timing code on the CPU provider at batch 32. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = [
    # name, Int8Params overrides, session graph optimization
    ("qdq per-channel minmax", {}, "all"),
    ("qdq per-tensor minmax", {"per_channel": False}, "all"),
    ("qdq per-channel percentile", {"method": "percentile"}, "all"),
    ("qdq per-channel entropy", {"method": "entropy"}, "all"),
    ("qdq per-channel minmax reduce_range", {"reduce_range": True}, "all"),
    ("qoperator per-channel minmax", {"format": "qoperator"}, "all"),
    ("qdq per-channel minmax, opt extended", {}, "extended"),
    ("qdq per-channel minmax, opt basic", {}, "basic"),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("project", type=Path, help="a scratch project of benchmarks/mobilenetv2_cpu.py")
    ap.add_argument("--calibration-images", type=int, default=512)
    ap.add_argument("--eval-images", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="names of the configs to run (default: all)")
    args = ap.parse_args()

    from tlpipe.bench.timing import onnx_runner, random_pixels, summarise, time_calls
    from tlpipe.config.export import Int8Params
    from tlpipe.data.dataset import load_split
    from tlpipe.export.onnx_model import open_model
    from tlpipe.export.quantize import calibration_images, to_int8
    from tlpipe.paths import Paths

    paths = Paths(args.project)
    x, y = load_split(paths.prepared, "test")
    idx = np.sort(np.random.default_rng(42).permutation(len(x))[: args.eval_images])  # the split is in class order
    x, y = np.asarray(x[idx]), np.asarray(y[idx])
    calib = calibration_images(paths, args.calibration_images, seed=42)
    fp32 = open_model(paths.onnx_model)
    ref = fp32.predict(x, 64)
    ref_acc = float((ref.argmax(1) == y).mean())
    pixels = random_pixels(args.batch, x.shape[1:], seed=0)

    def speed(model) -> float:
        call = onnx_runner(model, pixels, io_binding=True)
        return summarise(time_calls(call, 3, args.iterations, None), args.batch)["throughput"]

    base_speed = speed(fp32)
    print(
        f"fp32: accuracy {100 * ref_acc:.2f} % on {len(y)} test images, {base_speed:.1f} images/s at batch {args.batch}"
    )
    print("| int8 variant | accuracy | drop (points) | top-1 agreement | images/s | × fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, overrides, opt in CONFIGS:
            if args.only and name not in args.only:
                continue
            out = Path(tmp) / "int8.onnx"
            to_int8(paths.onnx_model, out, calibration=calib, p=Int8Params(**overrides), batch_size=64)
            model = open_model(out, graph_optimization=opt)
            probs = model.predict(x, 64)
            acc = float((probs.argmax(1) == y).mean())
            agree = float((probs.argmax(1) == ref.argmax(1)).mean())
            ips = speed(model)
            print(
                f"| {name} | {100 * acc:.2f} % | {100 * (ref_acc - acc):.2f} "
                f"| {agree:.4f} | {ips:.1f} | {ips / base_speed:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
