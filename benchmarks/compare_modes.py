"""Wall time of one backbone comparison run three ways, on the tiny project the tests use:

    python benchmarks/compare_modes.py              # two experiments (mobilenetv2, mobilenet α 0.25)

  one after another   flows.compare --jobs 1: `dvc exp run --temp`, one at a time
  DVC's queue         flows.compare --jobs 2: `dvc queue start -j 2`, watched
  two workers         flows.compare --deployment remote-experiment/experiment: two process
                      workers of a local Prefect server, a bare git `origin`, a local DVC remote

All three in one run on the same machine, so their ratios are what to read (the figures move with
the machine's load). Each mode starts from its own copy of the project with the shared stages
(ingest, validate) already reproduced, so what is timed is the experiments and their overhead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAST = ["export.variants=[]", "benchmark.batch_sizes=[4]"]
PER_BACKBONE = {"mobilenet": ["model.alpha=0.25", "model.weights=none"]}
BACKBONES = ["mobilenetv2", "mobilenet"]


def project(scratch: Path, name: str) -> Path:
    from tests.tiny_project import commit, make_project, run

    root = make_project(scratch / name / "repo")
    run(root, "dvc", "repro", "validate")
    commit(root, "shared stages reproduced")
    return root


def timed_compare(root: Path, **kwargs: object) -> float:
    from flows.compare import compare_backbones

    start = time.perf_counter()
    state = compare_backbones(
        backbones=BACKBONES,
        overrides=FAST,
        backbone_overrides=PER_BACKBONE,
        project_dir=str(root),
        poll_s=2,
        return_state=True,
        **kwargs,
    )
    elapsed = time.perf_counter() - start
    if not state.is_completed():
        raise SystemExit(f"comparison failed: {state.message}")
    return elapsed


def on_workers(scratch: Path, server_env: dict[str, str]) -> float:
    from tests.conftest import BIN, env
    from tests.prefect_client import stop_processes
    from tests.tiny_project import run

    root = project(scratch, "workers")
    origin = scratch / "origin.git"
    run(scratch, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    run(root, "git", "remote", "add", "origin", origin.as_uri())
    run(root, "dvc", "remote", "add", "-d", "storage", str(scratch / "dvc-remote"))
    run(root, "git", "commit", "-qam", "DVC remote")
    run(root, "git", "push", "-q", "origin", "main")
    prefect = f"{BIN}/prefect"
    run(root, prefect, "work-pool", "create", "tlpipe-experiments", "--type", "process", extra_env=server_env)
    run(root, prefect, "variable", "set", "tlpipe_git_url", origin.as_uri(), extra_env=server_env)
    run(root, prefect, "--no-prompt", "deploy", "--name", "experiment", extra_env=server_env)
    workers = [
        subprocess.Popen(
            [prefect, "worker", "start", "--pool", "tlpipe-experiments", "--limit", "1"],
            cwd=scratch,
            env=env(server_env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        return timed_compare(root, deployment="remote-experiment/experiment")
    finally:
        stop_processes(workers, timeout=30)


def main() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.prefect_client import start_server, stop_server

    scratch = Path(tempfile.mkdtemp(prefix="compare-modes-"))
    home = scratch / "prefect-home"
    home.mkdir()
    server, url = start_server(home)
    server_env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    os.environ.update(server_env)
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            sequential_root, queue_root = project(scratch, "sequential"), project(scratch, "queue")
            results = {
                "one after another (--jobs 1)": timed_compare(sequential_root, jobs=1),
                "DVC's queue (--jobs 2)": timed_compare(queue_root, jobs=2),
                "two Prefect workers": on_workers(scratch, server_env),
            }
    finally:
        stop_server(server)
        shutil.rmtree(scratch, ignore_errors=True)
    base = results["one after another (--jobs 1)"]
    print(f"\n{len(BACKBONES)} tiny experiments ({', '.join(BACKBONES)}), {os.cpu_count()} CPU cores\n")
    print("| mode | wall time (s) | vs one after another |\n|---|---:|---:|")
    for mode, seconds in results.items():
        print(f"| {mode} | {seconds:.1f} | {seconds / base:.2f}x |")


if __name__ == "__main__":
    main()
