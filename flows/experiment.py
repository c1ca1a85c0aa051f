"""One DVC experiment in a scratch clone, for a worker on any machine (the child of a distributed
comparison: flows.fanout).

    clone the git remote at the parent's commit → `dvc pull` what it has (and its run cache) →
    `dvc exp run -n <name> -S …` → `dvc exp push <remote> <name>` (git refs to the git remote,
    outputs and run cache to the DVC remote) → the experiment's metrics

Nothing here schedules or transfers anything by itself: Prefect's work pool hands the run to a
worker, git and DVC move the code, the data and the results. The scratch clone is deleted at the
end, whatever happened. A worker whose data lives elsewhere than the parent's sets
TLPIPE_WORKER_OVERRIDES (space-separated `key=value`, e.g. `data.path=/mnt/cifar.tar.gz`): they
come after the parent's overrides and win.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows import dvc_runner

WORKER_OVERRIDES_ENV = "TLPIPE_WORKER_OVERRIDES"
METRICS = ("reports/evaluate/metrics.json", "reports/benchmark/metrics.json")
# dvc exp run commits the experiment: a worker without a git identity of its own gets this one.
_DEFAULT_IDENTITY = {"name": "tlpipe worker", "email": "tlpipe-worker@localhost"}


@flow(name="remote-experiment", flow_run_name="{name}")
def remote_experiment(
    git_url: str,
    commit: str,
    name: str,
    overrides: list[str],
    git_remote: str = "origin",
    timeout_s: float = 6 * 3600,
    workdir: str | None = None,
) -> dict[str, Any]:
    """Run one experiment at `commit` of `git_url` and push it back; returns its metrics.

    Args:
        git_url: the project's git remote (as the parent sees it; the worker must reach it too).
        commit: the commit the parent started from; the experiment's baseline.
        name: the experiment's name (`dvc exp run -n`).
        overrides: its `-S` overrides, backbone first.
        git_remote: the remote's name in the clone (`dvc exp push <git_remote>`).
        timeout_s: the experiment is stopped (and this run fails) after this long.
        workdir: where scratch clones go (default: the system's temporary directory).
    """
    logger = get_run_logger()
    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix=f"tlpipe-{name}-", dir=workdir))
    try:
        repo = scratch / "repo"
        _git("clone", "--quiet", "--origin", git_remote, git_url, str(repo))
        _git("checkout", "--quiet", "--detach", commit, cwd=repo)
        # What the remote has: outputs of the commit's dvc.lock and the run cache, so that stages
        # the parent (or another worker) already ran are restored instead of rerun.
        dvc_runner.run_dvc(["pull", "--run-cache", "--allow-missing"], repo, logger, check=False, timeout=3600)
        sets = [*overrides, *shlex.split(os.environ.get(WORKER_OVERRIDES_ENV, ""))]
        args = ["exp", "run", "-n", name, *[a for s in sets for a in ("-S", s)]]
        dvc_runner.run_dvc(args, repo, logger, timeout=timeout_s, env=identity())
        dvc_runner.run_dvc(["exp", "push", "--run-cache", git_remote, name], repo, logger, timeout=3600)
        metrics = {p: json.loads((repo / p).read_text()) for p in METRICS if (repo / p).is_file()}
        return {
            "name": name,
            "host": socket.gethostname(),
            "started": started,
            "finished": time.time(),
            "metrics": metrics,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def identity() -> dict[str, str]:
    """Git's author and committer variables for the worker's own identity, or a default one."""
    env: dict[str, str] = {}
    for key, default in _DEFAULT_IDENTITY.items():
        configured = subprocess.run(["git", "config", f"user.{key}"], capture_output=True, text=True).stdout.strip()
        for role in ("AUTHOR", "COMMITTER"):
            var = f"GIT_{role}_{key.upper()}"
            env[var] = os.environ.get(var) or configured or default
    return env


def _git(*args: str, cwd: Path | None = None) -> None:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **identity()})
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[:500]}")
