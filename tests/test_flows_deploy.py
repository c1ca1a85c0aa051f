"""prefect.yaml's deployments on a real server: the README's server commands in the order written,
the schedules, a run picked up by a real process worker, and a server that asks for credentials
(Prefect's own authentication) refusing a client without them and serving a worker with them."""

from __future__ import annotations

import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timezone
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from tests.conftest import BIN, REPO, env
from tests.prefect_client import client, outcomes, start_server, stop_server
from tests.tiny_project import put_back, run

PREFECT = f"{BIN}/prefect"


@pytest.fixture
def b(reproduced) -> Iterator[Path]:
    """The reproduced project `b`, put back as committed after the test, however it ended."""
    with put_back(reproduced["b"]) as root:
        yield root


# prefect.yaml's deployments by their full names (flow/deployment), as `prefect deployment ls` lists them.
DEPLOYMENTS = (
    "pipeline/nightly-reproduce",
    "compare-backbones/weekly-compare",
    "compare-backbones/compare-on-workers",
    "remote-experiment/experiment",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def pools_and_variable(root: Path, server_env: dict[str, str]) -> None:
    """What `prefect deploy --all` needs: both work pools of prefect.yaml and the git URL variable."""
    for pool in ("tlpipe", "tlpipe-experiments"):
        run(root, PREFECT, "work-pool", "create", pool, "--type", "process", "--overwrite", extra_env=server_env)
    run(root, PREFECT, "variable", "set", "tlpipe_git_url", root.as_uri(), "--overwrite", extra_env=server_env)


def next_scheduled_run(deployment_id: UUID) -> Any:
    """The earliest run the server's scheduler created for a deployment (it runs every 2 s here)."""
    import time

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + 30
    with client() as c:
        while True:
            runs = c.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            )
            runs = [r for r in runs if r.state and r.state.is_scheduled()]
            if runs or time.monotonic() > deadline:
                assert runs, f"the scheduler created no run for deployment {deployment_id} in 30 s"
                return runs[0]
            time.sleep(0.5)


def test_every_doc_sets_the_api_url_before_starting_the_server() -> None:
    # `prefect server status --wait` without PREFECT_API_URL says "No API URL configured" and the
    # next command fails: the README's order (run by the test below) holds in every doc.
    for doc in (REPO / "README.md", REPO / "flows" / "README.md", REPO / "benchmarks" / "README.md"):
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            lines = [ln.strip() for ln in block.splitlines()]
            starts = [i for i, ln in enumerate(lines) if ln.startswith("prefect server start")]
            urls = [i for i, ln in enumerate(lines) if ln.startswith("prefect config set PREFECT_API_URL=")]
            if starts:
                assert urls and urls[0] < starts[0], f"{doc.relative_to(REPO)}: server started before its URL is set"


def test_readme_server_commands_run_in_the_order_written(reproduced, tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, re.S) if "prefect server start" in b)
    # Everything up to the long-running worker, verbatim, in a clone with an origin (as a user has).
    lines = [ln for ln in block.splitlines() if ln.strip()]
    setup = lines[: next(i for i, ln in enumerate(lines) if ln.startswith("prefect worker start"))]
    # The README's port, 4200, is where a user's own server (started from the README) listens: the
    # commands run as written but for the port, a free one, in the URL and for the server.
    port = free_port()
    assert [ln for ln in setup if "4200" in ln] == ["prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api"]
    setup = [ln.replace("127.0.0.1:4200/", f"127.0.0.1:{port}/") for ln in setup]
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(reproduced["b"]), str(clone))
    home = tmp_path / "prefect-home"
    clean = {k: v for k, v in env({"PREFECT_HOME": str(home)}).items() if not k.startswith("PREFECT_API")}
    clean.update(PREFECT_SERVER_API_PORT=str(port), COLUMNS="250")  # COLUMNS: a table's names unwrapped
    script = "set -euo pipefail\n" + "\n".join(setup) + "\n"
    try:
        done = subprocess.run(["bash", "-c", script], cwd=clone, env=clean, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
        listed = subprocess.run(
            [PREFECT, "deployment", "ls"], cwd=clone, env=clean, capture_output=True, text=True, timeout=120
        )
        assert listed.returncode == 0, (listed.stdout + listed.stderr)[-3000:]
        # Every deployment of prefect.yaml, by its full name, from the server on the free port.
        names = set(re.findall(r"^│\s*([\w-]+/[\w-]+)\s*│", listed.stdout, re.M))
        assert names == set(DEPLOYMENTS), listed.stdout
        assert {n.split("/")[1] for n in DEPLOYMENTS} == {
            d["name"] for d in yaml.safe_load((clone / "prefect.yaml").read_text())["deployments"]
        }
        assert port_in_use(port)
    finally:
        subprocess.run([PREFECT, "server", "stop"], cwd=clone, env=clean, capture_output=True, timeout=60)


def test_scheduled_deployments_are_created_and_one_runs_to_completion(b, prefect_server) -> None:
    root = b
    pools_and_variable(root, prefect_server)
    run(root, PREFECT, "--no-prompt", "deploy", "--all", extra_env=prefect_server)

    with client() as c:
        nightly = c.read_deployment_by_name("pipeline/nightly-reproduce")
        weekly = c.read_deployment_by_name("compare-backbones/weekly-compare")
        on_workers = c.read_deployment_by_name("compare-backbones/compare-on-workers")
        experiment = c.read_deployment_by_name("remote-experiment/experiment")
    assert [(s.schedule.cron, s.active) for s in nightly.schedules] == [("0 2 * * *", True)]
    assert [(s.schedule.cron, s.active) for s in weekly.schedules] == [("0 3 * * 6", True)]
    assert nightly.work_pool_name == weekly.work_pool_name == on_workers.work_pool_name == "tlpipe"
    assert experiment.work_pool_name == "tlpipe-experiments"
    assert on_workers.parameters["deployment"] == "remote-experiment/experiment"
    assert weekly.parameters["backbones"] == ["mobilenetv2", "mobilenet"]
    assert nightly.pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(root.resolve())}}
    ]
    # The server's scheduler turns the cron into runs: the next nightly one is due at 02:00 UTC.
    assert next_scheduled_run(nightly.id).expected_start_time.astimezone(timezone.utc).strftime("%H:%M") == "02:00"

    # An override that changes no result: the run reproduces nothing, and b stays as the other
    # tests expect it (reproduced, committed, the same dvc.lock as a).
    flow_run_id = deployment_run(root, prefect_server, "--param", 'overrides=["runtime.log_every_seconds=7"]')
    # A real process worker: polls once, runs what is due (our run, not tomorrow's), waits for it.
    run(root.parent, PREFECT, "worker", "start", "--pool", "tlpipe", "--run-once", extra_env=prefect_server)
    with client() as c:
        flow_run = c.read_flow_run(flow_run_id)
    assert flow_run.state.is_completed(), flow_run.state.message
    done = outcomes(flow_run_id)
    assert set(done.values()) == {"skipped"} and "benchmark" in done, done
    assert "log_every_seconds: 7" in (root / "params.yaml").read_text()


def test_a_server_with_credentials_refuses_clients_without_them_and_serves_workers_with_them(
    reproduced, tmp_path: Path
) -> None:
    root = reproduced["b"]
    proc, url = start_server(tmp_path, extra_env={"PREFECT_SERVER_API_AUTH_STRING": "admin:s3cret"})
    try:
        anonymous = {"PREFECT_HOME": str(tmp_path), "PREFECT_API_URL": url}
        refused = run(root, PREFECT, "work-pool", "ls", extra_env=anonymous, check=False)
        assert "401" in refused or "Unauthorized" in refused, refused[-2000:]
        wrong = {**anonymous, "PREFECT_API_AUTH_STRING": "admin:guess"}
        assert "401" in run(root, PREFECT, "work-pool", "ls", extra_env=wrong, check=False)

        user = {**anonymous, "PREFECT_API_AUTH_STRING": "admin:s3cret"}
        pools_and_variable(root, user)
        run(root, PREFECT, "--no-prompt", "deploy", "--name", "nightly-reproduce", extra_env=user)
        flow_run_id = deployment_run(root, user)
        # A worker without the credentials cannot even start; one with them runs the flow.
        worker = (PREFECT, "worker", "start", "--pool", "tlpipe", "--run-once")
        stranger = run(root.parent, *worker, extra_env=anonymous, check=False, timeout=120)
        assert "401" in stranger or "Unauthorized" in stranger, stranger[-2000:]
        with authenticated_client(url, "admin:s3cret") as c:
            assert c.read_flow_run(flow_run_id).state.is_scheduled()
        run(root.parent, *worker, extra_env=user)
        with authenticated_client(url, "admin:s3cret") as c:
            state = c.read_flow_run(flow_run_id).state
        assert state.is_completed(), state.message
    finally:
        stop_server(proc)


def deployment_run(root: Path, server_env: dict[str, str], *args: str) -> UUID:
    out = run(root, PREFECT, "deployment", "run", "pipeline/nightly-reproduce", *args, extra_env=server_env)
    return UUID(next(line.split()[-1] for line in out.splitlines() if "UUID" in line))


@contextmanager
def authenticated_client(url: str, auth: str) -> Iterator[Any]:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url, PREFECT_API_AUTH_STRING: auth}), client() as c:
        yield c
