"""The comparison flow: one DVC experiment per backbone, then a leaderboard.

    python -m flows.compare mobilenetv2 mobilenet efficientnetv2b0
    python -m flows.compare mobilenetv2 mobilenet -S train.epochs=5 --backbone-set mobilenetv2 model.alpha=0.35
    python -m flows.compare mobilenetv2 mobilenet --jobs 2      # DVC's queue, two at a time
    python -m flows.compare mobilenetv2 mobilenet --deployment remote-experiment/experiment   # Prefect workers

Each entry is `dvc exp run -S backbone=<name> [-S ...]` in a temporary copy of the project
(`--temp`; with --jobs > 1, DVC's queue, watched by flows.dvc_queue; with --deployment, a child
flow run per entry on a Prefect work pool, flows.fanout and flows.experiment), so the workspace keeps
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
import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import dvc_runner, leaderboard
from flows.compare_plan import Entry, escaping_path_overrides, plan_entries, require_commit, set_params
from flows.dvc_queue import QueuedRun, watch_queue
from flows.fanout import outcome_of, pull_experiments, remote_commit, start_children, wait_for_children
from flows.overrides import check_syntax, override_keys
from flows.pipeline import pipeline


class ExperimentsFailed(RuntimeError):
    """Some experiments of a comparison failed; the leaderboard lists the others."""


@dataclass
class Outcome:
    """How an experiment ended, as the flow saw it (None: as DVC recorded it)."""

    status: str | None = None
    error: str | None = None
    seconds: float | None = None


@task(name="dvc-exp-run", task_run_name="{entry.backbone}", cache_policy=NO_CACHE)
def run_experiment(entry: Entry, extra: list[str], root: str, timeout_s: float) -> str:
    """`dvc exp run --temp -n <name> -S backbone=... [-S ...]`: one experiment, its output in this task's log."""
    args = ["exp", "run", "--temp", "-n", entry.name, *set_params(entry, extra)]
    dvc_runner.run_dvc(args, root, get_run_logger(), timeout=timeout_s)
    return entry.name


@task(name="dvc-exp-queue", task_run_name="queue {entry.backbone}", cache_policy=NO_CACHE)
def queue_experiment(entry: Entry, extra: list[str], root: str) -> str:
    dvc_runner.run_dvc(["exp", "run", "--queue", "-n", entry.name, *set_params(entry, extra)], root, get_run_logger())
    return entry.name


@task(name="dvc-queue", task_run_name="queue (-j {jobs})", cache_policy=NO_CACHE)
def run_queue(
    root: str, names: list[str], jobs: int, timeout_s: float, stall_s: float, poll_s: float
) -> dict[str, QueuedRun]:
    """DVC's queue runs the experiments, `jobs` at a time, each in its own copy, watched (flows.dvc_queue)."""
    logger = get_run_logger()
    return watch_queue(Path(root), names, jobs=jobs, timeout_s=timeout_s, stall_s=stall_s, poll_s=poll_s, logger=logger)


@task(name="leaderboard", task_run_name="leaderboard", cache_policy=NO_CACHE)
def build_leaderboard(root: str, entries: list[Entry], tag: str, outcomes: dict[str, Outcome]) -> list[dict[str, Any]]:
    """Rows from `dvc exp show --json`, best accuracy first; written to reports/compare/ and as an artifact."""
    result = dvc_runner.run_dvc(["exp", "show", "--json"], root, leaderboard.quiet_logger())
    exps = leaderboard.experiments_by_name(json.loads(result.output))
    rows = []
    for e in entries:
        done = outcomes.get(e.backbone, Outcome())
        if done.error:
            # A queued experiment's output went to DVC's queue log, not to this flow's: show why here.
            get_run_logger().error("Experiment %s %s:\n%s", e.name, done.status or "failed", done.error)
        rows.append(leaderboard.leaderboard_row(e, exps.get(e.name), done.error, done.seconds, done.status))
    rows = leaderboard.ranked(rows)
    md_path = leaderboard.write(Path(root), rows, tag)
    create_table_artifact(
        rows,
        key="backbone-leaderboard",
        description=f"Backbone comparison {tag}: accuracy on the test split, ONNX model size, "
        f"{leaderboard.THROUGHPUT_MODEL} throughput at the benchmark's headline batch, train+finetune seconds "
        "(their timings), the experiment's wall time (run_s)",
    )
    png = base64.b64encode(md_path.with_suffix(".png").read_bytes()).decode()
    create_markdown_artifact(
        f"![accuracy against throughput](data:image/png;base64,{png})",
        key="backbone-leaderboard-plot",
        description=f"Backbone comparison {tag}: accuracy against onnxruntime throughput, point area = model size",
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
    timeout_s: float = 6 * 3600,
    stall_s: float = 600,
    deployment: str | None = None,
    git_remote: str = "origin",
    poll_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Run one DVC experiment per backbone and rank them.

    Args:
        backbones: registry names (tlpipe/model/backbones.py), e.g. ["mobilenetv2", "mobilenet"].
        overrides: `-S` overrides for every experiment, e.g. ["train.epochs=5"].
        backbone_overrides: extra overrides per backbone, e.g. {"mobilenetv2": ["model.alpha=0.35"]}.
        jobs: 1 runs the experiments one after the other (`dvc exp run --temp`); N > 1 queues them
            and lets DVC's queue run N at a time (`dvc exp run --run-all -j N`).
        project_dir: the DVC project's root (a git repository with a commit).
        timeout_s: an experiment running longer is stopped and reported as timed out.
        stall_s: DVC's queue making no progress this long, with no worker active, is restarted
            once, then its waiting experiments are reported as stuck.
        deployment: run each experiment as a child flow run of this deployment (e.g.
            "remote-experiment/experiment") on its work pool's workers, instead of in this
            workspace; the children clone `git_remote` at this commit and push their experiments
            back (flows.fanout). `jobs` then does not apply: the pool's workers set the pace.
        git_remote: the git remote the children clone and push to.
        poll_s: seconds between two looks at DVC's queue or at the child runs.
    """
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    check_syntax(overrides or [])
    tag = time.strftime("%Y%m%d-%H%M%S")
    entries = plan_entries(root, backbones, overrides or [], backbone_overrides or {}, tag)
    require_commit(root)
    if deployment:
        git_url, commit = remote_commit(root, git_remote)

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
    if deployment:
        # The children restore those stages from the DVC remote's run cache instead of rerunning them.
        dvc_runner.run_dvc(["push", "--run-cache"], root, logger, timeout=3600)
    extra = escaping_path_overrides(root, tracked_only=not deployment)
    if extra:
        logger.info("Paths leaving the project, made absolute for the experiments' temporary copies: %s", extra)

    outcomes: dict[str, Outcome] = {}
    if deployment:
        children = start_children(
            entries,
            extra,
            git_url=git_url,
            commit=commit,
            git_remote=git_remote,
            deployment=deployment,
            timeout_s=timeout_s,
        )
        children = wait_for_children(children, timeout_s, poll_s)
        pull_experiments(str(root), git_remote, [c.name for c in children if c.state == "completed"])
        for e, child in zip(entries, children, strict=True):
            outcomes[e.backbone] = Outcome(**outcome_of(child))
    elif jobs == 1:
        for e in entries:
            start = time.perf_counter()
            state = run_experiment(e, extra, str(root), timeout_s, return_state=True)
            outcomes[e.backbone] = Outcome(seconds=time.perf_counter() - start)
            if not state.is_completed():
                # Keep going: one backbone failing (out of memory, say) should not hide the others.
                err = state.result(raise_on_failure=False)
                reason = err.reason if isinstance(err, dvc_runner.DvcError) else str(err or state.message)
                outcomes[e.backbone] = Outcome("failed", reason, outcomes[e.backbone].seconds)
    else:
        for e in entries:
            queue_experiment(e, extra, str(root))
        runs = run_queue(str(root), [e.name for e in entries], jobs, timeout_s, stall_s, poll_s)
        for e in entries:
            run = runs[e.name]
            outcomes[e.backbone] = Outcome(None if run.state == "success" else run.state, run.error, run.seconds)
    rows = build_leaderboard(str(root), entries, tag, outcomes)
    failed = {
        r["backbone"]: f"experiment {r['experiment']} is {r['status']}: {r['error']}"
        for r in rows
        if r["status"] != "success"
    }
    for message in failed.values():
        logger.error("%s", message)
    if failed:
        raise ExperimentsFailed(
            f"{len(failed)} of {len(entries)} experiments failed: "
            + "; ".join(f"{b}: {m.splitlines()[0] if m else m}" for b, m in failed.items())
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.compare", description=__doc__.split("\n")[0])
    parser.add_argument("backbones", nargs="+", help="backbone names (tlpipe/model/backbones.py)")
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
    parser.add_argument(
        "--deployment",
        help="run each experiment as a flow run of this deployment (e.g. remote-experiment/experiment)",
    )
    parser.add_argument("--git-remote", default="origin", help="the git remote workers clone and push to")
    parser.add_argument("--timeout", type=float, default=6 * 3600, help="seconds an experiment may run (default 6 h)")
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
        timeout_s=args.timeout,
        deployment=args.deployment,
        git_remote=args.git_remote,
        return_state=True,
    )
    raise SystemExit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
