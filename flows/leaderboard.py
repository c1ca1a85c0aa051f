"""The comparison's leaderboard: one row per experiment from `dvc exp show --json`, best first,
as Markdown, CSV, a picture (accuracy against onnxruntime throughput) and a Prefect artifact."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from flows import dvc_runner
from flows.compare_plan import Entry

REPORTS = Path("reports") / "compare"

# Where the leaderboard's numbers live in a DVC experiment (the stages' metrics files and outs).
EVALUATE_METRICS = "reports/evaluate/metrics.json"
BENCHMARK_METRICS = "reports/benchmark/metrics.json"
TIMED_METRICS = ("reports/train/timings.json", "reports/finetune/timings.json")  # total_seconds each
MODEL_FILES = ("models/model.onnx", "models/model.keras")  # size of the first one present
THROUGHPUT_MODEL = "onnx-fp32"


def experiments_by_name(show: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`dvc exp show --json` → {experiment name: {"data": ..., "state": ..., "log": ...}}."""
    found: dict[str, dict[str, Any]] = {}
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            rev = (exp.get("revs") or [{}])[0]
            executor = exp.get("executor") or {}
            state = executor.get("state") or ("failed" if rev.get("error") else "success")
            found[exp.get("name") or rev.get("name")] = {
                "data": rev.get("data") or {},
                "state": state,
                "log": (executor.get("local") or {}).get("log"),
            }
    return found


def leaderboard_row(
    entry: Entry,
    exp: dict[str, Any] | None,
    error: str | None = None,
    run_s: float | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """One experiment's row, from its `dvc exp show` entry (None: DVC does not know it); `status`
    and `error` from whatever ran it win over what DVC recorded."""
    data = (exp or {}).get("data") or {}
    metrics = {path: (m or {}).get("data") or {} for path, m in (data.get("metrics") or {}).items()}
    outs = data.get("outs") or {}
    bench = metrics.get(BENCHMARK_METRICS, {})
    batch = bench.get("headline_batch")
    throughput = ((bench.get("throughput_median") or {}).get(THROUGHPUT_MODEL) or {}).get(f"b{batch}")
    size = next((outs[f]["size"] for f in MODEL_FILES if (outs.get(f) or {}).get("size")), None)
    seconds = [metrics.get(p, {}).get("total_seconds") for p in TIMED_METRICS]
    status = status or ("failed" if error else (exp or {}).get("state", "missing"))
    if status != "success" and not error:
        error = queue_log_reason((exp or {}).get("log"))
    return {
        "backbone": entry.backbone,
        "experiment": entry.name,
        "status": status,
        "accuracy": metrics.get(EVALUATE_METRICS, {}).get("accuracy"),
        "model_mb": round(size / 2**20, 3) if size else None,
        "throughput_img_s": throughput,
        "throughput_batch": batch,
        # Training time as the train and finetune stages measured it...
        "train_s": round(sum(s for s in seconds if s is not None), 1) if any(s is not None for s in seconds) else None,
        # ...and the experiment's wall time as the flow measured it (every stage it reran).
        "run_s": round(run_s, 1) if run_s is not None else None,
        "overrides": " ".join(entry.overrides[1:]),
        "error": error.splitlines()[0] if error else None,
    }


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Successful experiments by accuracy, best first, ranked; the others after them, unranked."""
    rows = sorted(rows, key=lambda r: (r["status"] != "success", -(r["accuracy"] or -1.0)))
    return [{"rank": i if r["status"] == "success" else None, **r} for i, r in enumerate(rows, 1)]


def queue_log_reason(log: str | None) -> str:
    """Why a queued experiment failed, from the log DVC's queue kept of it."""
    if not log or not Path(log).is_file():
        return "no log"
    return dvc_runner.failure_reason(Path(log).read_text(errors="replace").splitlines())


def to_markdown(rows: list[dict[str, Any]], tag: str) -> str:
    if not rows:
        return f"# Backbone comparison {tag}\n\n(no experiments)\n"
    cols = list(rows[0])
    lines = [f"# Backbone comparison {tag}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("" if r[c] is None else _fmt(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def plot(rows: list[dict[str, Any]], tag: str, path: Path) -> None:
    """Accuracy against onnxruntime throughput, one point per experiment sized by its model's size;
    experiments without both numbers (failed, missing) listed beside the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["accuracy"] is not None and r["throughput_img_s"]]
    others = [r for r in rows if r not in shown]
    fig, (ax, side) = plt.subplots(1, 2, figsize=(10, 5), gridspec_kw={"width_ratios": [3, 1.3]})
    biggest = max((r["model_mb"] or 0 for r in shown), default=0) or 1
    for r in shown:
        size = 60 + 600 * (r["model_mb"] or 0) / biggest
        ax.scatter(r["throughput_img_s"], 100 * r["accuracy"], s=size, alpha=0.6)
        label = f"{r['backbone']}\n{r['model_mb'] or '?'} MB"
        ax.annotate(
            label,
            (r["throughput_img_s"], 100 * r["accuracy"]),
            fontsize=8,
            ha="center",
            va="bottom",
            xytext=(0, 8),
            textcoords="offset points",
        )
    batch = next((r["throughput_batch"] for r in shown), None)
    ax.set_xlabel(f"{THROUGHPUT_MODEL} throughput, images/s at batch {batch} (onnxruntime)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"Backbone comparison {tag} (point area: model size)")
    ax.grid(True, alpha=0.3)
    side.axis("off")
    text = "\n".join(f"{r['backbone']}: {r['status']}\n  {(r['error'] or '')[:60]}" for r in others)
    side.text(
        0,
        1,
        ("Not plotted:\n" + text) if others else "Every experiment plotted.",
        va="top",
        fontsize=8,
        family="monospace",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(root: Path, rows: list[dict[str, Any]], tag: str) -> Path:
    """reports/compare/<tag>.{md,csv,png} and leaderboard.{md,csv,png} (the latest); returns the .md path."""
    out = root / REPORTS
    out.mkdir(parents=True, exist_ok=True)
    md, table_csv = to_markdown(rows, tag), to_csv(rows)
    for name in (tag, "leaderboard"):
        (out / f"{name}.md").write_text(md)
        (out / f"{name}.csv").write_text(table_csv)
        plot(rows, tag, out / f"{name}.png")
    return out / f"{tag}.md"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def quiet_logger() -> logging.Logger:
    """A logger that keeps the JSON of `dvc exp show` out of the run log."""
    logger = logging.getLogger("flows.leaderboard.exp_show")
    logger.propagate = False
    return logger
