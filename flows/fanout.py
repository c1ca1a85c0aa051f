"""A comparison spread over Prefect workers: one child flow run (flows.experiment) per experiment on
a work pool, through `run_deployment`; the parent only starts them, waits, and pulls the results.

Everything moves through engines that already do it: Prefect's work pool hands each child to a
free worker (process, Docker or Kubernetes, on any machine), the children clone the git remote
at the parent's commit and push their experiment back with `dvc exp push` (git refs to the git
remote, outputs to the DVC remote), and the parent gets them with `dvc exp pull`.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import dvc_runner
from flows.compare_plan import Entry, experiment_overrides

EXPERIMENT_DEPLOYMENT = "remote-experiment/experiment"


@dataclass
class ChildRun:
    name: str
    flow_run_id: UUID
    state: str = "scheduled"
    error: str | None = None
    started: float | None = None  # as Prefect recorded them (epoch seconds)
    finished: float | None = None

    @property
    def seconds(self) -> float | None:
        return self.finished - self.started if self.started and self.finished else None


def remote_commit(root: Path, git_remote: str) -> tuple[str, str]:
    """(the remote's URL, HEAD's commit), once HEAD is known to be on the remote: the children clone it."""
    url = _git(root, "remote", "get-url", git_remote)
    commit = _git(root, "rev-parse", "HEAD")
    _git(root, "fetch", "--quiet", git_remote)
    if not _git(root, "branch", "--remotes", "--contains", commit):
        raise ValueError(
            f"commit {commit[:12]} is not on the git remote {git_remote!r} ({url}): workers clone the remote, "
            f"so push it first (git push {git_remote} HEAD)"
        )
    if _git(root, "status", "--porcelain", "--untracked-files=no"):
        get_run_logger().warning("uncommitted changes in %s stay out: the experiments start from %s", root, commit)
    return url, commit


@task(name="start-children", cache_policy=NO_CACHE)
def start_children(
    entries: list[Entry],
    extra: list[str],
    *,
    git_url: str,
    commit: str,
    git_remote: str,
    deployment: str,
    timeout_s: float,
) -> list[ChildRun]:
    """One flow run of `deployment` per experiment, started and not waited for."""
    from prefect.deployments import run_deployment

    children = []
    for e in entries:
        parameters = {
            "git_url": git_url,
            "commit": commit,
            "name": e.name,
            "overrides": experiment_overrides(e, extra),
            "git_remote": git_remote,
            "timeout_s": timeout_s,
        }
        run = run_deployment(name=deployment, parameters=parameters, timeout=0)
        get_run_logger().info("experiment %s: flow run %s on %s", e.name, run.name, deployment)
        children.append(ChildRun(e.name, run.id))
    return children


@task(name="wait-for-children", cache_policy=NO_CACHE)
def wait_for_children(children: list[ChildRun], timeout_s: float, poll_s: float = 5.0) -> list[ChildRun]:
    """Wait until every child run is final; one still unfinished after `timeout_s` is cancelled."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            for child in children:
                run = client.read_flow_run(child.flow_run_id)
                child.state = run.state.type.value.lower() if run.state else "unknown"
                child.started = run.start_time.timestamp() if run.start_time else None
                child.finished = run.end_time.timestamp() if run.end_time else None
                if run.state and run.state.is_final() and not run.state.is_completed():
                    child.error = run.state.message or run.state.name
            if all(c.state in ("completed", "failed", "crashed", "cancelled") for c in children):
                return children
            if time.monotonic() > deadline:
                for child in (c for c in children if c.state not in ("completed", "failed", "crashed", "cancelled")):
                    client.set_flow_run_state(child.flow_run_id, Cancelling(message="compare timeout"), force=True)
                    child.state, child.error = "timed out", f"not finished after {timeout_s:g} s: cancelled"
                return children
            time.sleep(poll_s)


@task(name="dvc-exp-pull", cache_policy=NO_CACHE)
def pull_experiments(root: str, git_remote: str, names: Sequence[str]) -> None:
    """The children's experiments into this repository: git refs and their outputs."""
    if names:
        dvc_runner.run_dvc(["exp", "pull", git_remote, *names], root, get_run_logger(), timeout=3600)


def outcome_of(child: ChildRun) -> dict[str, Any]:
    """(status, error, seconds) for the leaderboard: None status when the child completed."""
    status = None if child.state == "completed" else child.state
    return {"status": status, "error": child.error, "seconds": child.seconds}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"{root}: git {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[:300]}")
    return done.stdout.strip()
