"""One command that proves the GPU path: installs, probes, the tiny pipeline on CUDA and TensorRT,
then the timed figures, into one JSON and one Markdown report (benchmarks/README.md, "GPU check").

    bash benchmarks/gpu_check.sh --out /tmp/gpu-check                # on a fresh GPU machine
    python benchmarks/gpu_preflight.py                               # can the driver run the CUDA builds?
    python benchmarks/gpu_check.py --out /tmp/gpu-check --dry-run    # on CPU: every step that needs no GPU

Every step runs in a child process under `timeout`, so a hung CUDA initialisation or TensorRT
engine build costs that step, not the run; a failed step is recorded with its message and the
next one starts. GPU_CHECK_FAIL=step1,step2 (or --fail) makes those steps fail on purpose, to
check that the report keeps going (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from gpu_check_report import Report  # noqa: E402 - after the path that finds it
from gpu_preflight import facts as preflight_facts  # noqa: E402
from gpu_preflight import verdict  # noqa: E402

PY = sys.executable
BIN = Path(PY).parent
CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"
# As benchmarks/README.md "GPU install": TF's CUDA 12 wheels, onnxruntime-gpu's CUDA 13 ones, and
# onnxruntime's cuDNN 13 in a folder of its own (both cuDNN wheels write the same file).
CUDNN_TARGET = REPO / ".venv" / "ort-cudnn-cu13"
INSTALLS = {
    "install_remove_cpu_onnxruntime": [PY, "-m", "pip", "uninstall", "-y", "onnxruntime"],
    "install_gpu_wheels": [
        PY,
        "-m",
        "pip",
        "install",
        *("--retries", "1", "--timeout", "20"),  # a machine without PyPI fails in seconds, not minutes
        "-e",
        ".[test]",
        "tensorflow[and-cuda]==2.21.0",
        "onnxruntime-gpu[cuda]==1.31.1",
        "nvidia-cublas~=13.0",
    ],  # fmt: skip
    "install_ort_cudnn": [
        PY,
        "-m",
        "pip",
        "install",
        *("--retries", "1", "--timeout", "20"),
        "--no-deps",
        "--target",
        str(CUDNN_TARGET),
        "nvidia-cudnn-cu13~=9.0",
    ],  # fmt: skip
}
# Seconds each step is expected to take on a GPU machine (the high end of benchmarks/README.md's
# estimates): the default budget is their sum, so that no step is cut for want of time.
ESTIMATE_S = {
    "install": 300,  # the three pip steps together
    "probes": 50,
    "pipeline_to_export": 120,
    "benchmark_cuda": 20,
    "benchmark_tensorrt": 180,
    "throughput_finetune": 120,
    "sweep_cuda": 120,
    "sweep_tensorrt": 180,
    "overhead": 30,  # nvidia-smi, preflight, scratch project, dvc init, reports
}
# onnxruntime-gpu 1.31.1's TensorRT provider links libnvinfer.so.10 (TensorRT 10). PyPI's
# tensorrt-cu13-libs 10.x is a stub (wheel_stub) that downloads the wheel from NVIDIA's own index
# at install time, so the check cannot install it from PyPI alone; it runs the TensorRT steps
# where TensorRT 10 is already there (pip's tensorrt_libs or the system's), and skips them
# with this reason otherwise.
NO_TENSORRT = (
    "TensorRT 10 (libnvinfer.so.10, which onnxruntime-gpu 1.31.1's TensorRT provider loads) is not installed, "
    "and PyPI's tensorrt-cu13-libs 10.x only downloads from NVIDIA's index: "
    "pip install 'tensorrt-cu13-libs~=10.16' where that index is reachable, then rerun"
)


def estimate_s(install: bool, tensorrt: bool) -> int:
    """The GPU steps' expected seconds, as ESTIMATE_S, without the installs or TensorRT if skipped."""
    skip = set() if install else {"install"}
    skip |= set() if tensorrt else {"benchmark_tensorrt", "sweep_tensorrt"}
    return sum(v for k, v in ESTIMATE_S.items() if k not in skip)


def tensorrt_lib_dir() -> Path | None:
    """The folder of pip's TensorRT 10 libraries (the tensorrt_libs package), if installed."""
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_libs")
    if spec and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations)))
        if (folder / "libnvinfer.so.10").exists():
            return folder
    return None


def tensorrt_present() -> bool:
    import ctypes

    folder = tensorrt_lib_dir()
    try:
        ctypes.CDLL(str(folder / "libnvinfer.so.10") if folder else "libnvinfer.so.10")
    except OSError:
        return False
    return True


ERROR_LINE = re.compile(r"^(error|ERROR|\w+(Error|Exception|Exit)\b)")
PACKAGES = ("tensorflow", "keras", "onnxruntime", "onnxruntime-gpu", "onnx", "dvc", "nvidia-cudnn-cu12", "tensorrt")


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.t0 = float(os.environ.get("GPU_CHECK_T0") or time.time())  # the shell's start: its own time counts
        self.fail = set(filter(None, (os.environ.get("GPU_CHECK_FAIL", "") + "," + ",".join(args.fail)).split(",")))
        self.out = Path(args.out).resolve()
        self.logs = self.out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(args.scratch).resolve() if args.scratch else self.out / "scratch" / "project"
        # Dry run: the TensorRT request runs and falls back to CPU, which is what it checks there.
        self.tensorrt = args.dry_run or tensorrt_present()
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "DVC_NO_ANALYTICS": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "TLPIPE_TRT_CACHE": str(self.out / "trt_cache"),
        }
        if CUDNN_TARGET.is_dir():
            self.env.setdefault("TLPIPE_ORT_CUDNN_DIR", str(CUDNN_TARGET / "nvidia" / "cudnn" / "lib"))
        trt_dir = tensorrt_lib_dir()
        if trt_dir:  # onnxruntime's TensorRT provider dlopens libnvinfer.so.10 by name
            self.env["LD_LIBRARY_PATH"] = f"{trt_dir}{os.pathsep}{self.env.get('LD_LIBRARY_PATH', '')}"
        if args.budget_s is None:
            args.budget_s = float(estimate_s(not (args.dry_run or args.skip_install), self.tensorrt))
        self.report = Report(
            self.out,
            {
                "dry_run": args.dry_run,
                "budget_s": args.budget_s,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.t0)),
                "host": platform.node(),
                "python": platform.python_version(),
                "commit": git_commit(),
            },
        )

    def left(self) -> float:
        return self.args.budget_s - (time.time() - self.t0)

    def record(self, name: str, status: str, seconds: float, message: str = "", **extra: Any) -> dict[str, Any]:
        rec = {"name": name, "status": status, "seconds": round(seconds, 2), "message": message, **extra}
        self.report.add_step(rec)
        print(f"[gpu_check] {name}: {status} in {seconds:.1f} s {message[:200]}", flush=True)
        return rec

    def skip(self, name: str, why: str) -> dict[str, Any]:
        return self.record(name, "skipped", 0.0, why)

    def command(self, name: str, argv: list[str], limit_s: float, cwd: Path = REPO) -> tuple[dict[str, Any], str]:
        """Run `argv` under `timeout`; the step's record and its output (also in logs/<name>.log)."""
        limit = min(limit_s, self.left() - 5)
        if limit < 5:
            return self.skip(name, f"budget spent ({self.left():.0f} s left)"), ""
        if name in self.fail:
            argv = [PY, "-c", f"raise SystemExit('{name}: forced to fail (GPU_CHECK_FAIL)')"]
        start = time.time()
        proc = subprocess.run(
            ["timeout", "--kill-after=15", f"{limit:.0f}", *argv],
            cwd=cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seconds = time.time() - start
        output = proc.stdout
        (self.logs / f"{name}.log").write_text(f"$ {' '.join(argv)}\n{output}")
        if proc.returncode == 0:
            return self.record(name, "ok", seconds), output
        if proc.returncode in (124, 137):
            message = f"timed out after {limit:.0f} s (the step's limit); last output: {tail(output)}"
            return self.record(name, "timeout", seconds, message), output
        message = f"exit {proc.returncode}: {tail(output)}"
        return self.record(name, "failed", seconds, message), output

    def in_process(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.left() < 10:
            return self.skip(name, f"budget spent ({self.left():.0f} s left)")
        start = time.time()
        try:
            if name in self.fail:
                raise RuntimeError(f"{name}: forced to fail (GPU_CHECK_FAIL)")
            value = fn()
        except Exception as err:  # noqa: BLE001 - recorded with its message; the next step runs
            self.record(name, "failed", time.time() - start, f"{type(err).__name__}: {err}")
            return None
        self.record(name, "ok", time.time() - start)
        return value

    def probe(self, name: str, what: str, limit_s: float) -> None:
        rec, output = self.command(name, [PY, str(HERE / "gpu_probe.py"), what], limit_s)
        if rec["status"] == "ok":
            self.report.set("facts", what, json.loads(output.strip().splitlines()[-1]))

    def benchmark(self, name: str, providers: list[str], limit_s: float, **bench: Any) -> None:
        """The benchmark stage through `dvc repro` in the scratch project, with these providers."""
        if TRT in providers and not self.tensorrt:
            self.skip(name, NO_TENSORRT)
            return
        if not (self.scratch / "models" / "model.onnx").is_file():
            self.skip(name, "no exported model in the scratch project (see the pipeline step)")
            return
        from gpu_check_scratch import read_params, write_params  # numpy, yaml: there once installed

        params = read_params(self.scratch)
        params["benchmark"].update(providers=providers, allow_fallback=self.args.dry_run, **bench)
        write_params(self.scratch, params)
        results = self.scratch / "reports" / "benchmark" / "results.json"
        results.unlink(missing_ok=True)
        rec, _ = self.command(name, [str(BIN / "dvc"), "repro", "benchmark"], limit_s, cwd=self.scratch)
        if rec["status"] == "ok" and results.is_file():
            self.report.set("figures", name, json.loads(results.read_text()))

    def preflight(self, gpu: bool) -> bool:
        """Driver CUDA against the builds' CUDA; on a GPU machine a mismatch stops the check."""
        found = preflight_facts()
        ok, line = verdict(found["driver_cuda"], found["onnxruntime_cuda"], found["tensorflow_cuda"])
        self.report.set("facts", "preflight", {**found, "ok": ok})
        if gpu and not ok:  # the report has the step; the console one line, whole
            self.report.add_step({"name": "preflight", "status": "failed", "seconds": 0.0, "message": line})
            print(f"[gpu_check] stopped before installing anything: {line}", flush=True)
            return False
        self.record("preflight", "ok", 0.0, line if gpu else f"dry run: {line}")
        return True

    def run(self) -> int:
        gpu = not self.args.dry_run
        if not self.preflight(gpu):
            self.report.set("facts", "failed_steps", ["preflight"])
            return 2
        expected = estimate_s(gpu and not self.args.skip_install, self.tensorrt)
        self.report.set("facts", "estimated_s", expected)
        if gpu and self.args.budget_s < expected:
            print(
                f"[gpu_check] --budget-s {self.args.budget_s:.0f} is below the {expected} s its steps are "
                "estimated at: the last steps may be skipped",
                flush=True,
            )
        for name, argv in INSTALLS.items():
            if gpu and not self.args.skip_install:
                self.command(name, argv, 300)
            else:
                self.skip(name, "dry run" if not gpu else "--skip-install")
        self.report.set("facts", "packages", package_versions())
        if shutil.which("nvidia-smi"):
            rec, output = self.command("nvidia_smi", ["nvidia-smi"], 30)
            if rec["status"] == "ok":
                self.report.set("facts", "nvidia_smi", output)
        else:
            self.skip("nvidia_smi", "nvidia-smi not found (no NVIDIA driver on this machine)")
        self.probe("probe_tensorflow", "tf", 120)
        self.probe("probe_onnxruntime", "ort", 120)
        weights = Path(self.args.weights_dir)
        # Imported here, not at the top: a fresh venv has no numpy, yaml or Pillow before the installs.
        from gpu_check_scratch import make_scratch, read_params

        self.in_process("scratch_project", lambda: make_scratch(self.scratch, gpu, weights))
        if (self.scratch / "dvc.yaml").is_file():
            self.command("dvc_init", [str(BIN / "dvc"), "init", "--no-scm", "-q"], 60, cwd=self.scratch)
            self.command("pipeline_to_export", [str(BIN / "dvc"), "repro", "export"], 600, cwd=self.scratch)
            self.report.set("facts", "pipeline_params", read_params(self.scratch)["runtime"])
        # The stage's own check: with allow_fallback false it fails naming the provider it got.
        self.benchmark("benchmark_cuda", [CUDA, CPU], 180)
        self.benchmark("benchmark_tensorrt", [TRT, CUDA, CPU], 300)
        self.timed_section(gpu)
        failed = [s["name"] for s in self.report.data["steps"] if s["status"] in ("failed", "timeout")]
        self.report.set("facts", "failed_steps", failed)
        self.report.set("facts", "total_seconds", round(time.time() - self.t0, 1))
        return 1 if failed else 0

    def timed_section(self, gpu: bool) -> None:
        """Sized to the time left: fewer steps and shorter sweeps when the installs took long."""
        if gpu:
            steps = 300 if self.left() > 300 else 100
            rec, output = self.command("throughput_finetune", [PY, str(HERE / "gpu_throughput.py"), str(steps)], 240)
        else:  # the same code on a model this CPU trains in seconds
            tiny = {"backbone": "mobilenetv2", "model": {"alpha": 0.35, "image_size": 32}}
            tiny |= {"finetune": {"batch_size": 8}, "runtime": {"mixed_precision": False, "xla": False}}
            argv = [PY, str(HERE / "gpu_throughput.py"), "3", json.dumps(tiny)]
            rec, output = self.command("throughput_finetune", argv, 120)
        if rec["status"] == "ok":
            self.report.set("figures", "throughput_finetune", json.loads(output.strip().splitlines()[-1]))
        # 4 models (Keras, fp32, fp16, int8) × batch sizes, a share of what is left for each cell.
        cuda_batches, trt_batches = ([1, 8, 32, 128], [1, 32]) if gpu else ([1, 4], [1])
        share = max(0.2, min(3.0, (self.left() * 0.4 - 60) / (4 * len(cuda_batches)))) if gpu else 0.2
        sweep = {"batch_sizes": cuda_batches, "duration_s": round(share, 1), "keras_baseline": True, "warmup": 5}
        self.benchmark("sweep_cuda", [CUDA, CPU], 300, **sweep)
        # On CPU the Keras baseline is timed once (sweep_cuda): it is the same model on the same CPU.
        trt = {**sweep, "batch_sizes": trt_batches, "keras_baseline": gpu}
        self.benchmark("sweep_tensorrt", [TRT, CUDA, CPU], 300, **trt)


def tail(output: str, lines: int = 12) -> str:
    """The step's error line first (a traceback's last line, DVC's or a stage's `error:`), then the
    end of its output, where the rest of the story is."""
    kept = [line for line in output.strip().splitlines() if line.strip()]
    errors = [line.strip() for line in kept if ERROR_LINE.search(line)]
    end = "\n".join(kept[-lines:]) or "(no output)"
    return f"{errors[-1]} | output ends: {end}" if errors else end


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return proc.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md, logs/")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="the whole run, installs included (default: the steps' estimate)"
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU: no installs, fallback allowed")
    parser.add_argument("--skip-install", action="store_true", help="GPU extras already installed")
    parser.add_argument("--scratch", help="scratch project folder (default OUT/scratch/project)")
    parser.add_argument("--weights-dir", default=str(REPO.parent / "shared" / "weights"))
    parser.add_argument("--fail", action="append", default=[], help="make this step fail (tests)")
    return Check(parser.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
