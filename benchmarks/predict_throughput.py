"""Batch prediction end to end against bare onnxruntime, on the same model and batch size.

    python benchmarks/predict_throughput.py                       # 300,000 PNGs, models/model.onnx
    python benchmarks/predict_throughput.py --count 2000 --model /path/to/model.onnx --out result.json

1. Writes `--count` unlabeled 32×32 PNGs named 1.png … N.png (the Kaggle test layout) into a
   temporary folder: the CIFAR-10 training images of ../shared/data (decoded from the tarball in
   memory, re-encoded as PNG, cycled past 50,000), or random pixels (`--pixels random`, or when
   the tarball is not there). `--images DIR` reuses a folder instead (`--keep` keeps the one made).
2. Times onnxruntime alone on that model and batch size as the benchmark stage does
   (tlpipe.bench.timing: the benchmark.* providers, threads and graph optimisation, the same
   random batch run again and again), half before and half after step 3, so that a change of load
   on a shared machine hits both.
3. Runs `python -m stages.predict DIR --format submission` on them in a child process (predict.*
   params, `--batch-size` set to the benchmark's), sampling the child's memory (RSS) as it goes
   and reading its progress lines, then checks the submission has one row per image.

Prints one JSON object (also written to `--out`) and a Markdown table row: predict's images/s
(images over the time from its start to the last row written, model loading included), bare
onnxruntime's (from the median batch time, the benchmark stage's headline figure, and the mean),
their ratio (target: at least 0.80), peak RSS, and RSS at 10% and at 100% of the images (flat
memory: about the same). The batch size is the benchmark stage's headline batch (32, else the
largest of benchmark.batch_sizes) unless `--batch-size` says otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg-train.tar.gz"
PROGRESS = re.compile(r"predict: ([\d,]+)(?:/[\d,]+)? images")
MB = 1024 * 1024


def source_pixels(kind: str, count: int, seed: int = 0) -> list[np.ndarray]:
    """Up to `count` distinct 32×32 RGB images: CIFAR-10 JPEGs decoded from the shared tarball, or noise."""
    if kind == "cifar":
        from PIL import Image

        out = []
        with tarfile.open(CIFAR, "r|gz") as tar:  # streamed: nothing is extracted
            for member in tar:
                if member.isfile() and member.name.lower().endswith((".jpg", ".jpeg", ".png")):
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as img:
                        out.append(np.asarray(img.convert("RGB")))
                    if len(out) >= count:
                        break
        return out
    rng = np.random.default_rng(seed)
    return list(rng.integers(0, 256, (min(count, 1000), 32, 32, 3), dtype=np.uint8))


def write_pngs(folder: Path, count: int, kind: str) -> float:
    """`count` PNGs 1.png … N.png in `folder`, cycling through the source images; seconds taken."""
    from PIL import Image

    start = time.perf_counter()
    pixels = source_pixels(kind, count)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(pixels[i % len(pixels)]).save(folder / f"{i + 1}.png", format="PNG")
    return time.perf_counter() - start


def bare_onnxruntime(model_path: Path, batch_size: int, seconds: float, params: Any) -> tuple[list[float], str]:
    """Seconds per batch of onnxruntime alone, as the benchmark stage times one model; the provider."""
    from stages.benchmark import check_same_image_input
    from tlpipe.bench.timing import onnx_runner, random_pixels, time_calls
    from tlpipe.export.onnx_model import open_model

    p = params.benchmark
    model = open_model(
        model_path,
        p.providers,
        allow_fallback=p.allow_fallback,
        threads=p.threads,
        graph_optimization=p.graph_optimization,
        max_batch=batch_size,
    )
    shape = check_same_image_input({"model": model})
    call = onnx_runner(model, random_pixels(batch_size, shape, seed=0), p.io_binding)
    return time_calls(call, p.warmup, p.iterations, seconds), model.provider


class Sampler:
    """RSS of a process every `every` seconds, and the progress lines it logs, both timestamped."""

    def __init__(self, proc: subprocess.Popen, every: float = 0.05) -> None:
        import psutil

        self.proc, self.ps, self.every = proc, psutil.Process(proc.pid), every
        self.rss: list[tuple[float, int]] = []
        self.progress: list[tuple[float, int]] = []
        self.lines: list[str] = []
        self.threads = [threading.Thread(target=self._sample, daemon=True), threading.Thread(target=self._read)]
        for t in self.threads:
            t.start()

    def _sample(self) -> None:
        while self.proc.poll() is None:
            try:
                self.rss.append((time.perf_counter(), self.ps.memory_info().rss))
            except Exception:  # noqa: BLE001 - the process ended between poll and read
                break
            time.sleep(self.every)

    def _read(self) -> None:
        last_shown = 0.0
        for line in self.proc.stderr:
            now = time.perf_counter()
            self.lines.append(line.rstrip())
            m = PROGRESS.search(line)
            if m:
                self.progress.append((now, int(m.group(1).replace(",", ""))))
                if now - last_shown >= 30 or "/" not in line:
                    print(line.rstrip(), file=sys.stderr, flush=True)
                    last_shown = now

    def join(self) -> None:
        for t in self.threads:
            t.join()

    def rss_at(self, t: float) -> int | None:
        """The last RSS sample taken at or before time `t`."""
        before = [r for s, r in self.rss if s <= t]
        return before[-1] if before else None

    def rss_at_fraction(self, fraction: float, total: int) -> tuple[int, int | None]:
        """(images done, RSS) at the first progress line past `fraction` of `total` images."""
        for t, done in self.progress:
            if done >= fraction * total:
                return done, self.rss_at(t)
        return 0, None


def run_predict(images: Path, model: Path, batch_size: int, params: Any, out_dir: Path, count: int) -> dict[str, Any]:
    """`python -m stages.predict` in a child process, sampled; its summary and memory figures."""
    from tlpipe.config.params import with_overrides

    # Frequent progress lines: they tell when 10% of the images are done.
    params = with_overrides(params, predict={"log_every_seconds": 0.1 if count >= 20000 else 0.01})
    child_params = out_dir / "params.yaml"
    child_params.write_text(yaml.safe_dump(params.model_dump(by_alias=True), sort_keys=False))
    output = out_dir / "submission.csv"
    cmd = [sys.executable, "-m", "stages.predict", str(images), "-o", str(output), "--model", str(model)]
    cmd += ["--params", str(child_params), "--format", "submission", "--batch-size", str(batch_size)]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc)
    stdout = proc.stdout.read()
    proc.wait()
    sampler.join()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(sampler.lines[-20:])
        raise SystemExit(f"stages.predict failed ({proc.returncode}):\n{tail}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    rows = sum(1 for _ in output.open()) - 1
    if rows != count or summary["unreadable"]:
        raise SystemExit(f"the submission has {rows} rows for {count} images ({summary['unreadable']} unreadable)")
    end_t = sampler.progress[-1][0] if sampler.progress else time.perf_counter()
    done10, rss10 = sampler.rss_at_fraction(0.10, count)
    rss100 = sampler.rss_at(end_t)
    peak_sampled = max((r for _, r in sampler.rss), default=0)
    # ru_maxrss of the waited-for children (kB on Linux): the exact peak, between samples too.
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, peak_sampled)
    return {
        "images": summary["images"],
        "rows": rows,
        "provider": summary["provider"],
        "seconds": summary["seconds"],
        "wall_s_with_start_up": round(wall, 2),
        "images_per_second": summary["images_per_second"],
        "peak_rss_mb": round(peak / MB, 1),
        "rss_mb_at_10pct": {"images": done10, "rss_mb": rss10 and round(rss10 / MB, 1)},
        "rss_mb_at_100pct": {"images": rows, "rss_mb": rss100 and round(rss100 / MB, 1)},
        "rss_samples": len(sampler.rss),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300_000, help="images to write and predict (default 300000)")
    parser.add_argument("--model", default="models/model.onnx", help="the exported ONNX model")
    parser.add_argument("--params", default="params.yaml", help="benchmark.* and predict.* from here")
    parser.add_argument("--batch-size", type=int, help="default: the benchmark stage's headline batch")
    parser.add_argument("--pixels", choices=["cifar", "random"], help="default: cifar when ../shared has it")
    parser.add_argument("--images", help="a folder of images to reuse instead of writing new ones")
    parser.add_argument("--workdir", help="where the temporary folder goes (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the images written (their folder is printed)")
    parser.add_argument("--bare-seconds", type=float, default=30.0, help="bare onnxruntime timing, split in two")
    parser.add_argument("--out", help="write the JSON result here too")
    args = parser.parse_args(argv)

    from tlpipe.bench.report import HEADLINE_BATCH
    from tlpipe.bench.timing import summarise
    from tlpipe.config.params import Params, load_params

    params_file = Path(args.params)
    params = load_params(params_file) if params_file.is_file() else Params()
    sizes = params.benchmark.batch_sizes
    batch_size = args.batch_size or (HEADLINE_BATCH if HEADLINE_BATCH in sizes else max(sizes))
    model = Path(args.model).resolve()
    if not model.is_file():
        raise SystemExit(f"{model}: no such model (run the export stage, or give --model)")
    work = Path(tempfile.mkdtemp(prefix="predict-throughput-", dir=args.workdir))
    result: dict[str, Any] = {"model": str(model), "batch_size": batch_size}
    try:
        if args.images:
            from tlpipe.predict.inputs import open_inputs

            images = Path(args.images).resolve()
            count = open_inputs(str(images)).total
            result["images_folder"] = str(images)
        else:
            images, count = work / "images", args.count
            kind = args.pixels or ("cifar" if CIFAR.is_file() else "random")
            print(f"writing {count:,} PNGs ({kind}) to {images}", file=sys.stderr, flush=True)
            result["pixels"], result["write_s"] = kind, round(write_pngs(images, count, kind), 1)
        result["count"] = count

        half = args.bare_seconds / 2
        times, provider = bare_onnxruntime(model, batch_size, half, params)
        (work / "out").mkdir()
        e2e = run_predict(images, model, batch_size, params, work / "out", count)
        times += bare_onnxruntime(model, batch_size, half, params)[0]
        bare = summarise(times, batch_size)
        result["predict"] = e2e
        result["onnxruntime"] = {
            "provider": provider,
            "batches": bare["iterations"],
            "images_per_second_median": round(bare["throughput_median"], 1),
            "images_per_second_mean": round(bare["throughput"], 1),
        }
        result["ratio"] = round(e2e["images_per_second"] / bare["throughput_median"], 3)
        result["ratio_to_mean"] = round(e2e["images_per_second"] / bare["throughput"], 3)
        result["target"] = 0.80
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if args.keep and not args.images:
            print(f"images kept in {work / 'images'}", file=sys.stderr)
        else:
            shutil.rmtree(work / "images", ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)

    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    p, o = result["predict"], result["onnxruntime"]
    print(
        f"| {result['count']:,} PNGs | batch {batch_size} | predict {p['images_per_second']:,.0f} img/s "
        f"| onnxruntime {o['images_per_second_median']:,.0f} img/s (median; mean {o['images_per_second_mean']:,.0f}) "
        f"| ratio {result['ratio']:.2f} (target ≥ 0.80) | peak RSS {p['peak_rss_mb']:,.0f} MB "
        f"| RSS {p['rss_mb_at_10pct']['rss_mb']} MB at 10%, {p['rss_mb_at_100pct']['rss_mb']} MB at 100% |"
    )


if __name__ == "__main__":
    main()
