"""Timing onnxruntime sessions (and the Keras baseline) batch by batch, the models taking turns."""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import numpy as np

from tlpipe.config.benchmark import BenchmarkParams
from tlpipe.export.contract import GPU_PROVIDERS
from tlpipe.export.onnx_model import OnnxModel

log = logging.getLogger(__spec__.name)

KERAS = "keras"


class TimedModel(Protocol):
    """What measure_interleaved times beside the ONNX sessions (tlpipe.bench.keras_baseline.KerasBaseline)."""

    def time(self, batch_size: int, warmup: int, iterations: int, duration_s: float | None) -> list[float]: ...


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
    """A no-argument callable running one batch and returning its outputs.

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

    def call() -> list[Any]:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return binding.get_outputs()  # OrtValues still on the GPU: no copy inside the timed call

    return call


def measure_interleaved(
    onnx: dict[str, OnnxModel], keras: TimedModel | None, image_shape: tuple[int, ...], p: BenchmarkParams
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
