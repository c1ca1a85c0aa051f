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

Planning: flows.compare_plan; the leaderboard (from `dvc exp show --json`: accuracy, model size,
throughput and training time per backbone): flows.leaderboard, written to
reports/compare/<run>.{md,csv,png} (plus leaderboard.*, the latest run) and a Prefect artifact.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import dvc_runner, leaderboard
from flows.compare_plan import Entry, escaping_path_overrides, plan_entries, require_commit, set_params
from flows.overrides import check_syntax, override_keys
from flows.pipeline import pipeline


class ExperimentsFailed(RuntimeError):
    """Some experiments of a comparison failed; the leaderboard lists the others."""


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
    result = dvc_runner.run_dvc(["exp", "show", "--json"], root, leaderboard.quiet_logger())
    exps = leaderboard.experiments_by_name(json.loads(result.output))
    for e in entries:
        exp = exps.get(e.name) or {}
        if e.backbone not in errors and exp.get("state") == "failed":
            # A queued experiment's output went to DVC's queue log, not to this flow's: show why here.
            get_run_logger().error("Experiment %s failed:\n%s", e.name, leaderboard.queue_log_reason(exp.get("log")))
    rows = leaderboard.ranked(
        [
            leaderboard.leaderboard_row(e, exps.get(e.name), errors.get(e.backbone), seconds.get(e.backbone))
            for e in entries
        ]
    )
    md_path = leaderboard.write(Path(root), rows, tag)
    create_table_artifact(
        rows,
        key="backbone-leaderboard",
        description=f"Backbone comparison {tag}: accuracy on the test split, ONNX model size, "
        f"{leaderboard.THROUGHPUT_MODEL} throughput at the benchmark's headline batch, train+finetune seconds "
        "(their timings), the experiment's wall time (run_s)",
    )
    get_run_logger().info("Leaderboard (%s):\n%s", md_path, md_path.read_text())
    return rows


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
    require_commit(root)

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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.compare", description=__doc__.split("\n")[0])
    parser.add_argument("backbones", nargs="+", help="backbone names (stages/backbones.py)")
    parser.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override for every experiment, repeatable",
    )
    parser.add_argument(
        "--backbone-set",
        nargs=2,
        action="append",
        default=[],
        metavar=("BACKBONE", "KEY=VALUE"),
        help="override for one backbone's experiment, repeatable",
    )
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
