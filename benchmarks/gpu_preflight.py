"""Before anything is installed or run on a GPU machine: can its NVIDIA driver run the CUDA that
onnxruntime-gpu and TensorFlow were built for? Standard library only (it runs before the installs).

    python benchmarks/gpu_preflight.py      # one line; exit 0 when they can work together, 2 otherwise

A CUDA runtime X.Y needs a driver that supports CUDA X.0 or later (CUDA's minor version
compatibility); onnxruntime-gpu 1.31.1 is built for CUDA 13.0 (a driver of the 580 series or later),
TensorFlow 2.21 for CUDA 12.5. An older driver does not fail loudly: onnxruntime falls back to
CPU, and TensorFlow sees no GPU.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

# What the pinned wheels (pyproject.toml, benchmarks/gpu_check.py INSTALLS) are built for, used when
# they are not installed yet: onnxruntime/capi/build_and_package_info.py's cuda_version and
# tensorflow/python/platform/build_info.py's cuda_version of those versions.
PINNED = {"onnxruntime-gpu 1.31.1": "13.0", "tensorflow 2.21.0": "12.5.1"}
# The oldest Linux driver series per CUDA major version (CUDA's release notes, table 3).
DRIVER_FOR = {12: "525", 13: "580"}


def driver_cuda_version() -> str | None:
    """The CUDA version the installed driver supports ("13.0"), from libcuda itself or nvidia-smi;
    None without an NVIDIA driver."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int(0)
        if libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0 and version.value:
            return f"{version.value // 1000}.{version.value % 1000 // 10}"
    except OSError:
        pass
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout
        found = re.search(r"CUDA Version:\s*(\d+\.\d+)", out)
        if found:
            return found.group(1)
    return None


def built_cuda(module: str, relative: str, pinned: str) -> tuple[str, str]:
    """(CUDA version, where it was read) of an installed package's build info, else the pin's."""
    spec = importlib.util.find_spec(module)
    if spec and spec.origin:
        path = Path(spec.origin).parent / relative
        if path.is_file():
            found = re.search(r"""['"]?cuda_version['"]?\s*[,=:]\s*['"]([\d.]+)['"]""", path.read_text())
            if found:
                return found.group(1), str(path)
    return PINNED[pinned], f"{pinned} (pinned; not installed yet)"


def facts() -> dict[str, Any]:
    ort, ort_from = built_cuda("onnxruntime", "capi/build_and_package_info.py", "onnxruntime-gpu 1.31.1")
    tf, tf_from = built_cuda("tensorflow", "python/platform/build_info.py", "tensorflow 2.21.0")
    return {"driver_cuda": driver_cuda_version(), "onnxruntime_cuda": ort, "tensorflow_cuda": tf,
            "onnxruntime_from": ort_from, "tensorflow_from": tf_from}  # fmt: skip


def _major(version: str) -> int:
    return int(version.split(".")[0])


def verdict(driver: str | None, onnxruntime: str, tensorflow: str) -> tuple[bool, str]:
    """Whether a driver supporting CUDA `driver` runs both builds, and the one line that says so."""
    builds = f"onnxruntime-gpu is built for CUDA {onnxruntime}, TensorFlow for CUDA {tensorflow}"
    if driver is None:
        return False, f"no NVIDIA driver (no libcuda.so.1, no nvidia-smi): {builds}; nothing can run on a GPU here"
    short = [
        f"{name} (CUDA {version}: driver {DRIVER_FOR.get(_major(version), '?')} or later)"
        for name, version in (("onnxruntime-gpu", onnxruntime), ("TensorFlow", tensorflow))
        if _major(driver) < _major(version)
    ]
    if short:
        return False, (
            f"the driver supports CUDA {driver}, too old for {' and '.join(short)}: upgrade the NVIDIA driver "
            "(a session would fall back to CPU)"
        )
    return True, f"the driver supports CUDA {driver}: {builds}: they can work together"


def main() -> int:
    found = facts()
    ok, line = verdict(found["driver_cuda"], found["onnxruntime_cuda"], found["tensorflow_cuda"])
    print(json.dumps({**found, "ok": ok, "line": line}))
    return 0 if ok else 2


if __name__ == "__main__":
    sys.exit(main())
