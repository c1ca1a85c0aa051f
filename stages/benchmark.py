"""Benchmark stage: onnxruntime throughput and latency per model and batch size, against Keras.

Every ONNX model the export stage wrote (models/model.onnx and models/variants/*.onnx) runs on
the first usable provider of `benchmark.providers`; the provider the session really runs on is
read back and recorded (onnxruntime falls back to CPU with only a log line). The same Keras model
is timed in the same run, in a child process: TensorFlow then neither shares threads with
onnxruntime nor grabs the GPU memory first, and its CUDA 12 libraries never meet onnxruntime's
CUDA 13 ones in one process.

Timing depends on the machine and its load, so DVC re-runs this stage only when the models, the
params or this code change: `dvc repro -f benchmark` re-measures on purpose.

Writes reports/benchmark/: results.json (machine, settings, every measurement), results.md
(the table), throughput.png, metrics.json (headline numbers for `dvc metrics show`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import multiprocessing
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from stages.atomic import atomic_dir, write_json
from stages.model_io import ModelError
from stages.onnx_io import GPU_PROVIDERS, OnnxModel, available_providers, open_model
from stages.params import BenchmarkParams, Params
from stages.paths import Paths

log = logging.getLogger(__name__)

KERAS = "keras"
HEADLINE_BATCH = 32  # the batch size the headline speedups are quoted at (else the largest swept)


def onnx_models(paths: Paths) -> dict[str, Path]:
    """onnx-fp32 plus one entry per variant file the export stage wrote."""
    if not paths.onnx_model.is_file():
        raise ModelError(f"{paths.onnx_model}: ONNX model not found; run the export stage first (dvc repro export)")
    found = {"onnx-fp32": paths.onnx_model}
    for f in sorted((paths.models / "variants").glob("model.*.onnx")):
        found[f"onnx-{f.name.split('.')[1]}"] = f
    return found


# ---------------------------------------------------------------- timing


def time_calls(call, warmup: int, iterations: int, duration_s: float | None) -> list[float]:
    """Seconds per call after `warmup` untimed calls: `iterations` calls, or as many as fit in `duration_s`."""
    for _ in range(warmup):
        call()
    times: list[float] = []
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if duration_s is None:
            if len(times) >= iterations:
                break
        elif time.perf_counter() - start >= duration_s:
            break
    return times


def summarise(times: list[float], batch_size: int) -> dict[str, float]:
    lat = np.asarray(times) * 1000
    return {
        "batch_size": batch_size,
        "iterations": len(times),
        "throughput": batch_size * len(times) / float(np.sum(times)),
        # From the median batch time: on a shared machine, the mean above also counts the
        # batches slowed by other processes; the median mostly does not.
        "throughput_median": batch_size / float(np.median(times)),
        "latency_p50_ms": float(np.percentile(lat, 50)),
        "latency_p90_ms": float(np.percentile(lat, 90)),
        "latency_p99_ms": float(np.percentile(lat, 99)),
        "latency_mean_ms": float(lat.mean()),
    }


def random_pixels(batch_size: int, image_shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch_size, *image_shape), dtype=np.uint8)


def onnx_runner(model: OnnxModel, pixels: np.ndarray, io_binding: bool):
    """A no-argument callable running one batch.

    On CUDA/TensorRT with `io_binding`, the input is placed on the GPU once and outputs stay
    there: no host copies inside the timed call. On CPU plain `run` is used: with onnxruntime
    1.31.1, run_with_iobinding ran MobileNetV2 at about half the throughput of run here.
    """
    session, name = model.session, model.input.name
    x = pixels.astype(model.input_dtype, copy=False)
    if not io_binding or model.provider not in GPU_PROVIDERS:
        return lambda: session.run(None, {name: x})
    import onnxruntime as ort

    device = "cuda"
    binding = session.io_binding()
    binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(x, device, 0))
    for out in session.get_outputs():
        binding.bind_output(out.name, device)

    def call() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return call


def _keras_worker(conn: Any, model_path: str, image_shape: tuple[int, ...], threads: int) -> None:
    """Child process: load the Keras model, then time batches on request until told to stop.

    Requests are (batch_size, warmup, iterations, duration_s); answers are lists of seconds, or
    ("error", message). tf.function is how a model is served from TensorFlow; predict() would add
    per-call overhead that is not the model's.
    """
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:  # take GPU memory as needed instead of all of it at start
            tf.config.experimental.set_memory_growth(gpu, True)
        model = keras.models.load_model(model_path, compile=False)
        if tuple(model.inputs[0].shape[1:]) != tuple(image_shape):
            raise ModelError(f"{model_path}: input shape {tuple(model.inputs[0].shape)} differs from the ONNX model's {image_shape}")
        forward = tf.function(lambda x: model(x, training=False))
        device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"
        conn.send({"device": device, "tensorflow": tf.__version__, "keras": keras.__version__})
        inputs: dict[int, Any] = {}
        while (request := conn.recv()) is not None:
            b, warmup, iterations, duration_s = request
            if b not in inputs:
                inputs[b] = tf.constant(random_pixels(b, image_shape, seed=0).astype(model.inputs[0].dtype))
            x = inputs[b]
            conn.send(time_calls(lambda: forward(x).numpy(), warmup, iterations, duration_s))
    except Exception as err:  # sent back whole: the parent raises it with the child's message
        conn.send(("error", f"{type(err).__name__}: {err}"))


class KerasBaseline:
    """The Keras model timed in a spawned child process, one request at a time."""

    def __init__(self, model_path: Path, image_shape: tuple[int, ...], threads: int) -> None:
        if not model_path.is_file():
            raise ModelError(f"{model_path}: Keras model not found (benchmark.keras_baseline is on)")
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_keras_worker, args=(child, str(model_path), image_shape, threads), daemon=True)
        self._proc.start()
        self.info = self._answer()

    def _answer(self) -> Any:
        answer = self._conn.recv()
        if isinstance(answer, tuple) and answer and answer[0] == "error":
            self.close()
            raise ModelError(f"Keras baseline: {answer[1]}")
        return answer

    def time(self, batch_size: int, warmup: int, iterations: int, duration_s: float | None) -> list[float]:
        self._conn.send((batch_size, warmup, iterations, duration_s))
        return self._answer()

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(timeout=30)
            if self._proc.is_alive():
                self._proc.terminate()


# ---------------------------------------------------------------- machine facts


def machine_facts() -> dict[str, Any]:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for package in ("onnxruntime-gpu", "onnxruntime", "tensorflow", "keras", "onnx", "tf2onnx", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gpu": gpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "onnxruntime_available_providers": available_providers(),
    }


# ---------------------------------------------------------------- reports


def headline(results: dict[str, Any], batch_sizes: list[int]) -> dict[str, Any]:
    """Throughput per model and batch size, and speedups at the headline batch.

    Speedups divide median-based throughputs (see `summarise`): robust to other processes on the cores.
    """
    hb = HEADLINE_BATCH if HEADLINE_BATCH in batch_sizes else max(batch_sizes)
    by = {m: {r["batch_size"]: r for r in res["rows"]} for m, res in results.items()}
    metrics: dict[str, Any] = {
        "headline_batch": hb,
        # Images/s from median batch times; means and latency percentiles are in results.json
        # (kept out of here so that `dvc exp show` stays readable).
        "throughput_median": {m: {f"b{b}": round(r["throughput_median"], 2) for b, r in rows.items()} for m, rows in by.items()},
        "speedup": {},
    }

    def ratio(a: str, b: str) -> None:
        if a in by and b in by:
            metrics["speedup"][f"{a}_vs_{b}"] = round(by[a][hb]["throughput_median"] / by[b][hb]["throughput_median"], 3)

    ratio("onnx-fp32", KERAS)
    for m in by:
        if m.startswith("onnx-") and m != "onnx-fp32":
            ratio(m, "onnx-fp32")
    return metrics


def markdown_table(results: dict[str, Any], machine: dict[str, Any]) -> str:
    keras_rows = {r["batch_size"]: r for r in results.get(KERAS, {}).get("rows", [])}
    lines = [
        f"Machine: {machine['cpu']}, {machine['cpus_usable']} usable cores, GPU: {machine['gpu'] or 'none'}; "
        f"onnxruntime {machine['versions'].get('onnxruntime-gpu') or machine['versions'].get('onnxruntime')}, "
        f"tensorflow {machine['versions'].get('tensorflow')}; load average at the end {machine['load_average_1min']:.2f} "
        "(other processes share these cores: compare ratios measured in one run)",
        "",
        "| model | runs on | batch | images/s (mean) | images/s (median batch) | p50 ms | p90 ms | p99 ms | × Keras (median) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        for r in res["rows"]:
            k = keras_rows.get(r["batch_size"])
            speedup = f"{r['throughput_median'] / k['throughput_median']:.2f}" if k else "–"
            lines.append(
                f"| {name} | {res['provider']} | {r['batch_size']} | {r['throughput']:.1f} | {r['throughput_median']:.1f} "
                f"| {r['latency_p50_ms']:.2f} "
                f"| {r['latency_p90_ms']:.2f} | {r['latency_p99_ms']:.2f} | {speedup} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, lx) = plt.subplots(1, 2, figsize=(10, 4))
    for name, res in results.items():
        b = [r["batch_size"] for r in res["rows"]]
        ax.plot(b, [r["throughput_median"] for r in res["rows"]], "o-", label=f"{name} ({res['provider']})")
        lx.plot(b, [r["latency_p50_ms"] for r in res["rows"]], "o-", label=name)
    for a, title, unit in ((ax, "Throughput (median batch)", "images/s"), (lx, "Latency p50 per batch", "ms")):
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xlabel("batch size")
        a.set_ylabel(unit)
        a.set_title(title)
        a.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the stage


def run(params: Params, paths: Paths) -> dict[str, Any]:
    p = params.benchmark
    onnx = {name: open_model(path, p.providers, p.allow_fallback, p.threads, p.graph_optimization) for name, path in onnx_models(paths).items()}
    image_shape = check_same_image_input(onnx)
    keras = KerasBaseline(paths.model, image_shape, p.threads) if p.keras_baseline else None
    try:
        times = measure_interleaved(onnx, keras, image_shape, p)
    finally:
        if keras is not None:
            keras.close()

    results: dict[str, Any] = {}
    if keras is not None:
        results[KERAS] = {"path": str(paths.model), "provider": f"tensorflow ({keras.info['device']})", "rows": []}
    for name, model in onnx.items():
        results[name] = {"path": str(model.path), "provider": model.provider, "rows": []}
    for (name, b), t in times.items():
        results[name]["rows"].append(summarise(t, b))
    machine = machine_facts()
    metrics = headline(results, p.batch_sizes)
    with atomic_dir(paths.reports("benchmark")) as out:
        write_json(out / "results.json", {"machine": machine, "settings": p.model_dump(), "image_shape": image_shape, "models": results})
        (out / "results.md").write_text(markdown_table(results, machine))
        plot(results, out / "throughput.png")
        write_json(out / "metrics.json", metrics)
    return metrics


def check_same_image_input(models: dict[str, OnnxModel]) -> tuple[int, ...]:
    """All models take [dynamic batch, H, W, 3] of one size; that image shape."""
    shapes = {}
    for name, model in models.items():
        shape = list(model.input.shape)
        if len(shape) != 4 or shape[-1] != 3 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise ModelError(f"{model.path}: input {model.input.name!r} has shape {shape}; expected [batch, H, W, 3]")
        if isinstance(shape[0], int) and shape[0] > 0:
            raise ModelError(f"{model.path}: input has a fixed batch size {shape[0]}; export with a dynamic batch")
        shapes[name] = tuple(shape[1:])
    if len(set(shapes.values())) != 1:
        raise ModelError(f"the ONNX models take different image shapes: {shapes}")
    return next(iter(shapes.values()))


def measure_interleaved(
    onnx: dict[str, OnnxModel], keras: KerasBaseline | None, image_shape: tuple[int, ...], p: BenchmarkParams
) -> dict[tuple[str, int], list[float]]:
    """Seconds per call for every (model, batch size), the models taking turns in `p.rounds` rounds.

    On a shared machine the load changes while the benchmark runs; taking turns spreads a busy
    minute over all models instead of charging it to one, so the speedup ratios stay fair.
    """
    times: dict[tuple[str, int], list[float]] = {}
    per_round = -(-p.iterations // p.rounds)  # ceil
    duration = p.duration_s / p.rounds if p.duration_s else None
    for b in p.batch_sizes:
        pixels = random_pixels(b, image_shape, seed=0)
        calls = {name: onnx_runner(model, pixels, p.io_binding) for name, model in onnx.items()}
        for r in range(p.rounds):
            warmup = p.warmup if r == 0 else 0
            if keras is not None:
                times.setdefault((KERAS, b), []).extend(keras.time(b, warmup, per_round, duration))
            for name, call in calls.items():
                times.setdefault((name, b), []).extend(time_calls(call, warmup, per_round, duration))
        for name in ([KERAS] if keras else []) + list(onnx):
            t = times[(name, b)]
            log.info("%s, batch %d: %.1f images/s", name, b, b * len(t) / sum(t))
    return dict(sorted(times.items(), key=lambda kv: ([KERAS, *onnx].index(kv[0][0]), kv[0][1])))


def main() -> None:
    from stages.cli import run_stage

    run_stage(run)


if __name__ == "__main__":
    main()
