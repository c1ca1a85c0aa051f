"""The GPU check's dry run, for real: TF, DVC and onnxruntime on the tiny generated images, CPU only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_WEIGHTS

STEPS = [
    "preflight",
    "install_remove_cpu_onnxruntime",
    "install_gpu_wheels",
    "install_ort_cudnn",
    "nvidia_smi",
    "probe_tensorflow",
    "probe_onnxruntime",
    "scratch_project",
    "dvc_init",
    "pipeline_to_export",
    "benchmark_cuda",
    "benchmark_tensorrt",
    "throughput_finetune",
    "sweep_cuda",
    "sweep_tensorrt",
]


def session_provider(providers: list[str]) -> str:
    """The provider an onnxruntime session asking for `providers` really gets on this machine."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [value],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=providers).get_providers()[0]


def test_dry_run_reports_every_step_and_goes_on_after_a_failure(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = subprocess.run(
        [
            sys.executable,
            "benchmarks/gpu_check.py",
            "--out",
            str(out),
            "--dry-run",
            "--weights-dir",
            str(SHARED_WEIGHTS),
        ],
        cwd=REPO,
        env={**os.environ, "GPU_CHECK_FAIL": "probe_tensorflow"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads((out / "gpu_check.json").read_text())
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS, proc.stdout[-3000:]
    for s in steps.values():
        assert s["status"] in ("ok", "failed", "skipped", "timeout") and s["seconds"] >= 0
    # The forced failure: a clear message, an exit status of 1, and every later step still ran.
    assert steps["probe_tensorflow"]["status"] == "failed"
    assert "probe_tensorflow: forced to fail (GPU_CHECK_FAIL)" in steps["probe_tensorflow"]["message"]
    assert proc.returncode == 1 and report["facts"]["failed_steps"] == ["probe_tensorflow"]
    assert steps["install_gpu_wheels"]["status"] == "skipped"
    ran = STEPS[STEPS.index("probe_onnxruntime") :]
    assert all(steps[name]["status"] == "ok" for name in ran), {n: steps[n]["message"] for n in ran}
    # What onnxruntime's sessions really got, whatever get_available_providers() lists: the
    # provider a CUDA session gets in this machine's own onnxruntime (CPU without a usable GPU).
    got = report["facts"]["ort"]["session_providers"]
    assert got["CUDAExecutionProvider"][0] == session_provider(["CUDAExecutionProvider", "CPUExecutionProvider"])
    figures = report["figures"]
    for name in ("benchmark_cuda", "benchmark_tensorrt", "sweep_cuda", "sweep_tensorrt"):
        models = figures[name]["models"]
        assert {"onnx-fp32", "onnx-fp16", "onnx-int8"} <= set(models)
        assert all(r["throughput"] > 0 for m in models.values() for r in m["rows"])
        assert models["onnx-fp32"]["provider"] == "CPUExecutionProvider"
    assert "keras" in figures["sweep_cuda"]["models"]
    assert figures["throughput_finetune"]["images_per_s"] > 0
    md = (out / "gpu_check.md").read_text()
    assert "| probe_tensorflow | failed |" in md and "### sweep_cuda" in md
    assert (out / "logs" / "pipeline_to_export.log").is_file()


def test_a_spent_budget_skips_steps_with_the_reason(tmp_path: Path) -> None:
    """Past the budget each remaining step is recorded as skipped, and the report is still written."""
    out = tmp_path / "report"
    subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(out), "--dry-run", "--budget-s", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    steps = {s["name"]: s for s in json.loads((out / "gpu_check.json").read_text())["steps"]}
    assert steps["probe_onnxruntime"]["status"] == "skipped"
    assert "budget spent" in steps["probe_onnxruntime"]["message"]
    assert steps["sweep_cuda"]["status"] == "skipped"


def test_preflight_names_the_driver_and_both_builds_and_says_when_they_cannot_work_together() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_preflight import verdict

    ok, line = verdict("13.0", "13.0", "12.5.1")
    assert ok and line.startswith("the driver supports CUDA 13.0: onnxruntime-gpu is built for CUDA 13.0")
    ok, line = verdict("12.4", "13.0", "12.5.1")  # a CUDA 12 driver: TensorFlow runs, onnxruntime-gpu cannot
    assert not ok and "too old for onnxruntime-gpu (CUDA 13.0: driver 580 or later)" in line
    assert "TensorFlow" not in line
    ok, line = verdict("11.8", "13.0", "12.5.1")
    assert not ok and "onnxruntime-gpu (CUDA 13.0: driver 580 or later) and TensorFlow (CUDA 12.5.1" in line
    ok, line = verdict(None, "13.0", "12.5.1")
    assert not ok and line.startswith("no NVIDIA driver")


@pytest.mark.skipif(
    bool(shutil.which("nvidia-smi")) or Path("/dev/nvidiactl").exists(), reason="checks a machine without a driver"
)
def test_on_a_machine_whose_driver_cannot_run_the_builds_the_check_stops_in_one_line(tmp_path: Path) -> None:
    """Not a dry run, here (no NVIDIA driver): nothing is installed or run, one line says why."""
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines() == [
        "[gpu_check] stopped before installing anything: no NVIDIA driver (no libcuda.so.1, no nvidia-smi): "
        "onnxruntime-gpu is built for CUDA 13.0, TensorFlow for CUDA 12.5.1; nothing can run on a GPU here"
    ]
    report = json.loads((out / "gpu_check.json").read_text())
    assert [s["name"] for s in report["steps"]] == ["preflight"] and report["facts"]["failed_steps"] == ["preflight"]


def test_the_default_budget_is_what_the_steps_are_estimated_to_take() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_check import ESTIMATE_S, estimate_s

    assert estimate_s(True, True) == sum(ESTIMATE_S.values())
    # Without TensorRT (not installable from PyPI alone) its two steps are skipped, and not budgeted.
    assert (
        estimate_s(True, False)
        == sum(ESTIMATE_S.values()) - ESTIMATE_S["benchmark_tensorrt"] - ESTIMATE_S["sweep_tensorrt"]
    )
    assert estimate_s(False, False) == estimate_s(True, False) - ESTIMATE_S["install"]
