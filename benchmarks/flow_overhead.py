"""What the pipeline flow costs over plain `dvc repro` on a fully cached pipeline.

    python benchmarks/flow_overhead.py                  # builds a tiny project, reproduces it once
    python benchmarks/flow_overhead.py --repeat 5 --project /path/to/a/reproduced/project

Every figure is the wall time of a whole command, as a user would type it, in the same project
(all stages up to date, so DVC and Prefect are all there is to measure):

  dvc repro                                    the baseline
  python -m flows.pipeline, PREFECT_API_URL    against a running `prefect server start` (loopback)
  python -m flows.pipeline, temporary server   no PREFECT_API_URL: Prefect starts (and stops) its
                                               own server for the run; database already migrated
  same, first use                              a fresh PREFECT_HOME: the database is created and
                                               migrated first (once per machine/user)

Prefect's home for all of these is a temporary directory: the user's ~/.prefect is not touched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BIN = str(Path(sys.executable).parent)


def base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(
        PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
        PREFECT_HOME=str(home),
        DVC_NO_ANALYTICS="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return elapsed


def start_server(home: Path) -> tuple[subprocess.Popen, str, float]:
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
        env=base_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url, time.perf_counter() - start
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.perf_counter() - start > 180:
            raise SystemExit("prefect server did not start")
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, help="a reproduced DVC project (default: build a tiny one)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="flow-overhead-"))
    try:
        if args.project:
            project = args.project.resolve()
        else:
            from tests.tiny_project import make_project

            project = make_project(scratch / "repo")
            print(f"reproducing the tiny project once in {project} ...", flush=True)
            timed([sys.executable, "-m", "dvc", "repro"], project, base_env(scratch / "home"))
        flow = [sys.executable, "-m", "flows.pipeline"]
        results: dict[str, list[float]] = {}

        home = scratch / "home"
        server, url, server_s = start_server(home)
        try:
            served = {**base_env(home), "PREFECT_API_URL": url}
            for _ in range(args.repeat):
                results.setdefault("dvc repro", []).append(
                    timed([sys.executable, "-m", "dvc", "repro"], project, served)
                )
                results.setdefault("flow, running server", []).append(timed(flow, project, served))
        finally:
            server.terminate()
            server.wait(timeout=30)
        # The server above created and migrated `home`'s database: the temporary server reuses it.
        for _ in range(args.repeat):
            results.setdefault("flow, temporary server", []).append(timed(flow, project, base_env(home)))
        for i in range(max(1, args.repeat // 2)):
            results.setdefault("flow, temporary server, first use", []).append(
                timed(flow, project, base_env(scratch / f"fresh-home-{i}"))
            )

        baseline = statistics.median(results["dvc repro"])
        print(f"\nproject: {project}\n`prefect server start` healthy after {server_s:.1f} s (fresh database)\n")
        print("| command | median s | runs (s) | over dvc repro |")
        print("|---|---|---|---|")
        for name, times in results.items():
            med = statistics.median(times)
            print(f"| {name} | {med:.1f} | {', '.join(f'{t:.1f}' for t in times)} | {med - baseline:+.1f} |")
        print(f"\nload average: {', '.join(f'{x:.2f}' for x in os.getloadavg())}; cores: {os.cpu_count()}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
