"""What the benchmark stage reports: the machine, the headline numbers, the table and the plot."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from tlpipe.bench.timing import KERAS
from tlpipe.export.onnx_model import available_providers

HEADLINE_BATCH = 32  # the batch size the headline speedups are quoted at (else the largest swept)


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
        gpu = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
            or None
        )
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
        "throughput_median": {
            m: {f"b{b}": round(r["throughput_median"], 2) for b, r in rows.items()} for m, rows in by.items()
        },
        "speedup": {},
    }

    def ratio(a: str, b: str) -> None:
        if a in by and b in by:
            metrics["speedup"][f"{a}_vs_{b}"] = round(
                by[a][hb]["throughput_median"] / by[b][hb]["throughput_median"], 3
            )

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
        f"tensorflow {machine['versions'].get('tensorflow')}; load "
        f"average at the end {machine['load_average_1min']:.2f} "
        "(other processes share these cores: compare ratios measured in one run)",
        "",
        "| model | runs on | batch | images/s (mean) | images/s "
        "(median batch) | p50 ms | p90 ms | p99 ms | × Keras (median) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        for r in res["rows"]:
            k = keras_rows.get(r["batch_size"])
            speedup = f"{r['throughput_median'] / k['throughput_median']:.2f}" if k else "–"
            lines.append(
                f"| {name} | {res['provider']} | {r['batch_size']} | "
                f"{r['throughput']:.1f} | {r['throughput_median']:.1f} "
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
