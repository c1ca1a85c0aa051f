"""Benchmark stage on the tiny exported model: real onnxruntime and Keras timings, tiny sweep."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from stages import benchmark
from tests.tiny_models import tiny_params, tiny_project
from tlpipe.bench import timing as bench_timing
from tlpipe.config.params import ParamsError, parse_params, with_overrides
from tlpipe.export.contract import CPU
from tlpipe.export.onnx_model import ProviderError, gpu_device_present, open_model
from tlpipe.paths import Paths
from tlpipe.util.errors import ModelError


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tiny_project(tmp_path_factory)


def test_benchmark_stage_measures_every_model_and_keras(project: Path) -> None:
    paths = Paths(project)
    # CUDA first with fallback on: the results must say which provider really ran each model.
    providers = ["CUDAExecutionProvider", CPU]
    used = open_model(paths.onnx_model, providers, allow_fallback=True).provider
    if not gpu_device_present():
        assert used == CPU
    params = with_overrides(tiny_params(), benchmark={"providers": providers, "allow_fallback": True})
    metrics = benchmark.run(params, paths)
    out = paths.reports("benchmark")
    results = json.loads((out / "results.json").read_text())
    models = results["models"]
    assert list(models) == ["keras", "onnx-fp32", "onnx-fp16", "onnx-int8"]
    for name, res in models.items():
        assert [r["batch_size"] for r in res["rows"]] == [1, 4]
        assert all(r["iterations"] == 3 and r["throughput"] > 0 for r in res["rows"])
        assert res["provider"] == (used if name.startswith("onnx") else "tensorflow (CPU)")
    machine = results["machine"]
    assert machine["cpus_usable"] >= 1 and machine["versions"]["onnx"] and machine["versions"]["tensorflow"]
    assert results["image_shape"] == [32, 32, 3]

    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["headline_batch"] == 4  # 32 is not in the sweep: the largest batch
    # Every model and batch size measured, and each speedup is the ratio of two measured throughputs.
    median = {m: {r["batch_size"]: r["throughput_median"] for r in res["rows"]} for m, res in models.items()}
    assert metrics["throughput_median"] == {
        m: {f"b{b}": round(t, 2) for b, t in rows.items()} for m, rows in median.items()
    }
    pairs = {"onnx-fp32_vs_keras", "onnx-fp16_vs_onnx-fp32", "onnx-int8_vs_onnx-fp32"}
    assert set(metrics["speedup"]) == pairs
    for pair in pairs:
        a, b = pair.split("_vs_")
        assert metrics["speedup"][pair] == pytest.approx(median[a][4] / median[b][4], abs=1e-3)
    table = (out / "results.md").read_text()
    assert f"| onnx-int8 | {used} | 4 |" in table and "| keras | tensorflow (CPU) | 1 |" in table
    assert (out / "throughput.png").read_bytes()[:4] == b"\x89PNG"


def test_time_calls_by_count_and_by_duration() -> None:
    calls = []
    assert len(bench_timing.time_calls(lambda: calls.append(1), warmup=2, iterations=5, duration_s=None)) == 5
    assert len(calls) == 7
    assert len(bench_timing.time_calls(lambda: None, warmup=0, iterations=1, duration_s=0.05)) > 1


def test_batch_size_zero_is_a_params_error() -> None:
    with pytest.raises(ParamsError, match=r"benchmark.batch_sizes: .*positive integers, got \[0, 8\]"):
        parse_params({"benchmark": {"batch_sizes": [0, 8]}})
    with pytest.raises(ParamsError, match="benchmark.providers"):
        parse_params({"benchmark": {"providers": ["NoSuchExecutionProvider"]}})


def test_missing_onnx_and_unavailable_provider_write_nothing(project: Path, tmp_path: Path) -> None:
    empty = Paths(tmp_path)
    with pytest.raises(ModelError, match="model.onnx: ONNX model not found; run the export stage"):
        benchmark.run(tiny_params(), empty)
    if gpu_device_present():
        pytest.skip("a GPU is present: CUDA may really be available")
    shutil.copytree(project / "models", tmp_path / "models")
    params = with_overrides(
        tiny_params(), benchmark={"providers": ["CUDAExecutionProvider", CPU], "allow_fallback": False}
    )
    with pytest.raises(ProviderError, match="CUDAExecutionProvider not available .*available: CPUExecutionProvider"):
        benchmark.run(params, Paths(tmp_path))
    assert not (tmp_path / "reports").exists()
