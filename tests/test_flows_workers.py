"""The comparison spread over Prefect workers, as on several machines: a bare git repository as
`origin`, a local directory as the DVC remote, a real Prefect server on loopback, a process work
pool with two worker processes, the `experiment` deployment of prefect.yaml (its git_clone pull
step included). Two experiments run at once on the two workers, a third fails and is reported, and
a fresh clone of the remote sees the two with `dvc exp pull` and `dvc exp show`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import BIN, env
from tests.prefect_client import artifact, client, stop_processes
from tests.tiny_project import make_project, run

FAST = ["export.variants=[]", "benchmark.batch_sizes=[4]"]
POOL = "tlpipe-experiments"


@pytest.fixture
def published(tmp_path: Path, prefect_server: dict[str, str]) -> Path:
    """A tiny project pushed to a bare `origin`, with a DVC remote and the experiment deployment."""
    root = make_project(tmp_path / "repo")
    origin = tmp_path / "origin.git"
    run(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    run(root, "git", "remote", "add", "origin", origin.as_uri())
    # Absolute: DVC resolves a relative remote against .dvc/, which differs in every clone.
    run(root, "dvc", "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote"))
    run(root, "git", "commit", "-qam", "DVC remote")
    run(root, "git", "push", "-q", "origin", "main")
    prefect = f"{BIN}/prefect"
    run(root, prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite", extra_env=prefect_server)
    run(root, prefect, "variable", "set", "tlpipe_git_url", origin.as_uri(), "--overwrite", extra_env=prefect_server)
    run(root, prefect, "--no-prompt", "deploy", "--name", "experiment", extra_env=prefect_server)
    return root


def test_two_workers_run_experiments_at_once_and_push_them_where_any_clone_sees_them(
    published: Path, prefect_server: dict[str, str], tmp_path: Path
) -> None:
    from flows.compare import compare_backbones

    root = published
    with client() as c:
        deployment = c.read_deployment_by_name("remote-experiment/experiment")
    # The flow's code comes from the remote, as on a machine that has no checkout.
    assert deployment.pull_steps == [
        {"prefect.deployments.steps.git_clone": {"repository": "{{ prefect.variables.tlpipe_git_url }}"}}
    ]
    workers = []
    for i in range(2):
        home = tmp_path / f"worker-{i}"
        home.mkdir()
        workers.append(
            subprocess.Popen(
                [f"{BIN}/prefect", "worker", "start", "--pool", POOL, "--name", f"worker-{i}", "--limit", "1"],
                cwd=home,
                env=env(prefect_server),
                stdout=(home / "worker.log").open("w"),
                stderr=subprocess.STDOUT,
            )
        )
    try:
        state = compare_backbones(
            backbones=["mobilenetv2", "mobilenet", "vgg16"],
            overrides=FAST,
            backbone_overrides={
                "mobilenet": ["model.alpha=0.25", "model.weights=none"],
                "vgg16": ["model.weights=missing.weights.h5"],
            },
            deployment="remote-experiment/experiment",
            poll_s=2,
            timeout_s=900,
            project_dir=str(root),
            return_state=True,
        )
    finally:
        stop_processes(workers, timeout=30)
    logs = "\n".join((tmp_path / f"worker-{i}" / "worker.log").read_text()[-2000:] for i in range(2))
    assert state.is_failed() and "1 of 3 experiments failed: vgg16" in state.message, logs

    rows = {r["backbone"]: r for r in artifact(state.state_details.flow_run_id, "backbone-leaderboard")}
    assert rows["vgg16"]["status"] == "failed" and "missing.weights.h5" in rows["vgg16"]["error"]
    names = [rows[b]["experiment"] for b in ("mobilenetv2", "mobilenet")]
    for b in ("mobilenetv2", "mobilenet"):
        assert rows[b]["status"] == "success" and rows[b]["run_s"] > 0, rows[b]

    # The two workers ran them at the same time: Prefect's own start and end times overlap.
    with client() as c:
        runs = [r for r in c.read_flow_runs() if r.deployment_id == deployment.id and r.name in names]
    assert len(runs) == 2 and all(r.state.is_completed() for r in runs)
    assert max(r.start_time for r in runs) < min(r.end_time for r in runs), [(r.start_time, r.end_time) for r in runs]

    # Any clone of the remote sees the experiments and gets their outputs from the DVC remote.
    fresh = tmp_path / "fresh"
    run(tmp_path, "git", "clone", "-q", f"{tmp_path / 'origin.git'}", str(fresh))
    run(fresh, "dvc", "exp", "pull", "origin", *names)
    shown = run(fresh, "dvc", "exp", "show", "--json")
    assert all(name in shown for name in names), shown[-3000:]
    # ...and the leaderboard's accuracies are the experiments' own evaluation reports.
    for backbone, name in zip(("mobilenetv2", "mobilenet"), names, strict=True):
        run(fresh, "dvc", "exp", "apply", name)
        metrics = json.loads((fresh / "reports/evaluate/metrics.json").read_text())
        assert metrics["accuracy"] == pytest.approx(rows[backbone]["accuracy"]), backbone
