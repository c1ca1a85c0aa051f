"""A real Prefect server for the tests, and what they ask of it: artifacts, logs, runs."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from tests.tiny_project import env


def start_server(home: Path, tries: int = 3, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free loopback port: (the process, its API URL).

    A port found free can be taken before the server binds it: a server that fails to bind is
    started again on another port."""
    log = home / "server.log"
    for _ in range(tries):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}/api"
        server_env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": url, **(extra_env or {})}
        proc = subprocess.Popen(
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env=env({**server_env, "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"}),
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        if wait_healthy(url, proc, log):
            return proc, url
    pytest.fail(f"prefect server did not start in {tries} tries:\n{log.read_text()[-3000:]}")


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> bool:
    """True once the server answers; False if it exited because its port was taken."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if "address already in use" in log.read_text().lower():
                return False
            pytest.fail(f"prefect server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code in (200, 401):
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    pytest.fail(f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    from prefect.logging.handlers import APILogWorker

    try:
        APILogWorker.drain_all(timeout=10)  # the last log lines go to the server before it stops
    finally:
        stop_processes([proc], timeout=20)


def stop_processes(procs: list[subprocess.Popen], timeout: float) -> None:
    """Asks every process to stop, then kills those still running after `timeout` seconds: a
    Prefect server's or worker's graceful shutdown can take long on busy cores."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def artifact(flow_run_id: UUID, key: str) -> Any:
    """The data of the artifact `key` a flow run created (tables: a list of row dicts)."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with client() as c:
        found = c.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), key=ArtifactFilterKey(any_=[key])
            )
        )
    assert found, f"flow run {flow_run_id} created no artifact {key!r}"
    data = found[0].data
    return json.loads(data) if isinstance(data, str) and data[:1] in "[{" else data


def log_text(flow_run_id: UUID, expect: tuple[str, ...] = (), timeout: float = 30) -> str:
    """Every log line of a flow run and its task runs, as the Prefect UI shows them.

    Prefect ships logs to the server in the background, so the last lines of a run may reach it
    after the run's final state: wait (up to `timeout`) for the lines in `expect`.
    """
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline = time.monotonic() + timeout
    while True:
        lines: list[str] = []
        with client() as c:
            while True:
                page = c.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200, offset=len(lines)
                )
                lines += [log.message for log in page]
                if len(page) < 200:
                    break
        text = "\n".join(lines)
        if all(e in text for e in expect) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def outcomes(flow_run_id: UUID) -> dict[str, str]:
    """What each stage did in a pipeline flow run (its `pipeline-stages` artifact)."""
    return {row["stage"]: row["outcome"] for row in artifact(flow_run_id, "pipeline-stages")}
