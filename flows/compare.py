"""The comparison flow: one DVC experiment per backbone, then a leaderboard.

    python -m flows.compare mobilenetv2 mobilenet efficientnetv2b0
    python -m flows.compare mobilenetv2 mobilenet -S train.epochs=5 --backbone-set mobilenetv2 model.alpha=0.35
    python -m flows.compare mobilenetv2 mobilenet --jobs 2      # DVC's queue, two at a time

Each entry is `dvc exp run -S backbone=<name> [-S ...]` in a temporary copy of the project
(`--temp`; with --jobs > 1, `--queue` then `dvc exp run --run-all -j N`), so the workspace keeps
the user's own params and results and a scheduled `dvc repro` after a comparison does not
retrain anything. Two `dvc repro` never run in one workspace at once: DVC's lock forbids it.

Before the experiments, the stages no override touches (ingest, validate for a backbone
comparison) are brought up to date once in the workspace through the pipeline flow: every
experiment then restores them from the DVC cache instead of recomputing them.

The leaderboard comes from `dvc exp show --json`: accuracy, model size, throughput and training
time per backbone, as a Prefect table artifact and as reports/compare/<run>.{md,csv} (plus
leaderboard.{md,csv}, the latest run).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import dvc_runner
from flows.overrides import OverrideError, apply_overrides, check_backbone, check_syntax, override_keys, read_params
from flows.pipeline import pipeline

REPORTS = Path("reports") / "compare"

# Where the leaderboard's numbers live in a DVC experiment (the stages' metrics files and outs).
EVALUATE_METRICS = "reports/evaluate/metrics.json"
BENCHMARK_METRICS = "reports/benchmark/metrics.json"
TIMED_METRICS = ("reports/train/metrics.json", "reports/finetune/metrics.json")  # total_seconds each
MODEL_FILES = ("models/model.onnx", "models/model.keras")  # size of the first one present
THROUGHPUT_MODEL = "onnx-fp32"


class ExperimentsFailed(RuntimeError):
    """Some experiments of a comparison failed; the leaderboard lists the others."""


@dataclass(frozen=True)
class Entry:
    backbone: str
    name: str  # the DVC experiment's name
    overrides: tuple[str, ...]  # every -S of this experiment, backbone first


def plan_entries(
    root: Path,
    backbones: Sequence[str],
    overrides: Sequence[str],
    backbone_overrides: dict[str, Sequence[str]],
    tag: str,
) -> list[Entry]:
    """One entry per backbone, each checked (syntax, schema, backbone registry) before anything runs."""
    if not backbones:
        raise ValueError("compare needs at least one backbone, got none")
    if isinstance(backbones, str):
        raise ValueError(f"backbones must be a list of names, got the string {backbones!r}")
    duplicates = sorted({b for b in backbones if list(backbones).count(b) > 1})
    if duplicates:
        raise ValueError(f"backbones repeat: {', '.join(duplicates)}")
    stray = sorted(set(backbone_overrides) - set(backbones))
    if stray:
        raise ValueError(f"backbone_overrides names backbones not in the comparison: {', '.join(stray)}")
    for b in backbones:
        check_backbone(b)
    entries = []
    for b in backbones:
        sets = (f"backbone={b}", *overrides, *backbone_overrides.get(b, ()))
        if any(key == "backbone" for keys in override_keys(sets[1:]).values() for key in keys):
            raise OverrideError(f"overrides {list(sets[1:])} set the backbone; list backbones instead")
        apply_overrides(root, sets, dry_run=True)
        entries.append(Entry(b, f"{b}-{tag}", sets))
    return entries


def escaping_path_overrides(root: Path, pipe: dvc_runner.Pipeline, stages: Sequence[str]) -> list[str]:
    """Absolute-path overrides for params of `stages` that hold paths leaving the project (`../x`).

    An experiment runs in a temporary copy under .dvc/tmp/exps/, where `../shared/weights` no
    longer points where it does from the project root. The stages that rerun in the experiment
    get such paths made absolute (same files, so the same results); stages that do not rerun
    keep their params untouched, so DVC still finds them up to date.
    """
    params = read_params(root)
    declared = {
        key for s in stages for file, keys in pipe.params.get(s, ()) if Path(file) == Path("params.yaml") for key in keys
    }
    found: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, str) and value.startswith("../"):
            found.append(f"{key}={(root / value).resolve()}")

    for key in sorted(declared):
        value: Any = params
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        walk(value, key)
    return found


def set_params(entry: Entry, extra: Sequence[str]) -> list[str]:
    """`-S` arguments of an experiment: its overrides, then the path fixes for keys it does not set."""
    own = {key for keys in override_keys(entry.overrides).values() for key in keys}
    args: list[str] = []
    for o in (*entry.overrides, *(x for x in extra if x.split("=", 1)[0] not in own)):
        args += ["-S", o]
    return args


@task(name="dvc-exp-run", task_run_name="{entry.backbone}", cache_policy=NO_CACHE)
def run_experiment(entry: Entry, extra: list[str], root: str) -> str:
    """`dvc exp run --temp -n <name> -S backbone=... [-S ...]`: one experiment, its output in this task's log."""
    dvc_runner.run_dvc(["exp", "run", "--temp", "-n", entry.name, *set_params(entry, extra)], root, get_run_logger())
    return entry.name


@task(name="dvc-exp-queue", task_run_name="queue {entry.backbone}", cache_policy=NO_CACHE)
def queue_experiment(entry: Entry, extra: list[str], root: str) -> str:
    dvc_runner.run_dvc(["exp", "run", "--queue", "-n", entry.name, *set_params(entry, extra)], root, get_run_logger())
    return entry.name


@task(name="dvc-exp-run-all", task_run_name="run queue (-j {jobs})", cache_policy=NO_CACHE)
def run_queue(root: str, jobs: int) -> None:
    """`dvc exp run --run-all -j N`: DVC's queue runs the experiments, each in its own copy."""
    dvc_runner.run_dvc(["exp", "run", "--run-all", "-j", str(jobs)], root, get_run_logger())


@task(name="leaderboard", task_run_name="leaderboard", cache_policy=NO_CACHE)
def build_leaderboard(
    root: str, entries: list[Entry], tag: str, errors: dict[str, str], seconds: dict[str, float]
) -> list[dict[str, Any]]:
    """Rows from `dvc exp show --json`, best accuracy first; written to reports/compare/ and as an artifact."""
    result = dvc_runner.run_dvc(["exp", "show", "--json"], root, _quiet_logger())
    exps = experiments_by_name(json.loads(result.output))
    rows = [leaderboard_row(e, exps.get(e.name), errors.get(e.backbone), seconds.get(e.backbone)) for e in entries]
    for e in entries:
        exp = exps.get(e.name) or {}
        if e.backbone not in errors and exp.get("state") == "failed":
            # A queued experiment's output went to DVC's queue log, not to this flow's: show why here.
            get_run_logger().error("Experiment %s failed:\n%s", e.name, queue_log_reason(exp.get("log")))
    rows.sort(key=lambda r: (r["status"] != "success", -(r["accuracy"] or -1.0)))
    for i, row in enumerate(rows, 1):
        row["rank"] = i if row["status"] == "success" else None
    rows = [{"rank": r.pop("rank"), **r} for r in rows]
    out = Path(root) / REPORTS
    out.mkdir(parents=True, exist_ok=True)
    md, table_csv = to_markdown(rows, tag), to_csv(rows)
    for name in (tag, "leaderboard"):
        (out / f"{name}.md").write_text(md)
        (out / f"{name}.csv").write_text(table_csv)
    create_table_artifact(
        rows,
        key="backbone-leaderboard",
        description=f"Backbone comparison {tag}: accuracy on the test split, ONNX model size, "
        f"{THROUGHPUT_MODEL} throughput at the benchmark's headline batch, train+finetune seconds "
        "(their metrics), the experiment's wall time (run_s)",
    )
    get_run_logger().info("Leaderboard (%s):\n%s", out / f"{tag}.md", md)
    return rows


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
    entry: Entry, exp: dict[str, Any] | None, error: str | None = None, run_s: float | None = None
) -> dict[str, Any]:
    data = (exp or {}).get("data") or {}
    metrics = {path: (m or {}).get("data") or {} for path, m in (data.get("metrics") or {}).items()}
    outs = data.get("outs") or {}
    bench = metrics.get(BENCHMARK_METRICS, {})
    batch = bench.get("headline_batch")
    throughput = ((bench.get("throughput_median") or {}).get(THROUGHPUT_MODEL) or {}).get(f"b{batch}")
    size = next((outs[f]["size"] for f in MODEL_FILES if (outs.get(f) or {}).get("size")), None)
    seconds = [metrics.get(p, {}).get("total_seconds") for p in TIMED_METRICS]
    status = "failed" if error else (exp or {}).get("state", "missing")
    if status == "failed" and not error:
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
        # ...and the experiment's wall time as this flow measured it (every stage it reran).
        "run_s": round(run_s, 1) if run_s is not None else None,
        "overrides": " ".join(entry.overrides[1:]),
        "error": error.splitlines()[0] if error else None,
    }


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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}"
    return str(v)


def _quiet_logger():  # noqa: ANN202 - a logger that keeps the JSON of `dvc exp show` out of the run log
    import logging

    logger = logging.getLogger("flows.compare.exp_show")
    logger.propagate = False
    return logger


@flow(name="compare-backbones")
def compare_backbones(
    backbones: list[str],
    overrides: list[str] | None = None,
    backbone_overrides: dict[str, list[str]] | None = None,
    jobs: int = 1,
    project_dir: str = ".",
) -> list[dict[str, Any]]:
    """Run one DVC experiment per backbone and rank them.

    Args:
        backbones: registry names (stages/backbones.py), e.g. ["mobilenetv2", "mobilenet"].
        overrides: `-S` overrides for every experiment, e.g. ["train.epochs=5"].
        backbone_overrides: extra overrides per backbone, e.g. {"mobilenetv2": ["model.alpha=0.35"]}.
        jobs: 1 runs the experiments one after the other (`dvc exp run --temp`); N > 1 queues them
            and lets DVC's queue run N at a time (`dvc exp run --run-all -j N`).
        project_dir: the DVC project's root (a git repository with a commit).
    """
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    check_syntax(overrides or [])
    tag = time.strftime("%Y%m%d-%H%M%S")
    entries = plan_entries(root, backbones, overrides or [], backbone_overrides or {}, tag)
    _require_commit(root)

    pipe = dvc_runner.read_pipeline(root)
    keys: dict[str, list[str]] = {}
    for e in entries:
        for file, ks in override_keys(e.overrides).items():
            keys.setdefault(file, []).extend(ks)
    affected = pipe.affected_by(keys)
    shared = [s for s in pipe.order if s not in affected]
    if shared:
        logger.info("Stages shared by every experiment, reproduced once in the workspace: %s", ", ".join(shared))
        pipeline(stages=shared, project_dir=str(root))
    extra = escaping_path_overrides(root, pipe, affected)
    if extra:
        logger.info("Paths leaving the project, made absolute for the experiments' temporary copies: %s", extra)

    failed: dict[str, str] = {}
    seconds: dict[str, float] = {}
    if jobs == 1:
        for e in entries:
            start = time.perf_counter()
            state = run_experiment(e, extra, str(root), return_state=True)
            seconds[e.backbone] = time.perf_counter() - start
            if not state.is_completed():
                # Keep going: one backbone failing (out of memory, say) should not hide the others.
                err = state.result(raise_on_failure=False)
                failed[e.backbone] = err.reason if isinstance(err, dvc_runner.DvcError) else str(err or state.message)
    else:
        for e in entries:
            queue_experiment(e, extra, str(root))
        run_queue(str(root), jobs)
    rows = build_leaderboard(str(root), entries, tag, failed, seconds)
    for row in rows:
        if row["status"] != "success" and row["backbone"] not in failed:
            failed[row["backbone"]] = f"experiment {row['experiment']} is {row['status']}: {row['error']}"
            logger.error("%s", failed[row["backbone"]])
    if failed:
        raise ExperimentsFailed(
            f"{len(failed)} of {len(entries)} experiments failed: "
            + "; ".join(f"{b}: {m.splitlines()[0] if m else m}" for b, m in failed.items())
        )
    return rows


def _require_commit(root: Path) -> None:
    import subprocess

    done = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"{root}: `dvc exp run` needs a git repository with at least one commit")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.compare", description=__doc__.split("\n")[0])
    parser.add_argument("backbones", nargs="+", help="backbone names (stages/backbones.py)")
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every experiment, repeatable")  # fmt: skip
    parser.add_argument("--backbone-set", nargs=2, action="append", default=[], metavar=("BACKBONE", "KEY=VALUE"),
                        help="override for one backbone's experiment, repeatable")  # fmt: skip
    parser.add_argument("-j", "--jobs", type=int, default=1, help="experiments at a time (>1: DVC's queue)")
    parser.add_argument("-C", "--project-dir", default=".", help="the DVC project's root (default: .)")
    args = parser.parse_args(argv)
    per_backbone: dict[str, list[str]] = {}
    for backbone, override in args.backbone_set:
        per_backbone.setdefault(backbone, []).append(override)
    state = compare_backbones(
        backbones=args.backbones,
        overrides=args.overrides,
        backbone_overrides=per_backbone,
        jobs=args.jobs,
        project_dir=args.project_dir,
        return_state=True,
    )
    raise SystemExit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
