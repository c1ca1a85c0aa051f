"""The comparison flow on one machine: experiments in temporary copies (--temp), on DVC's queue
(--jobs 2, watched, a failing one reported), the leaderboard and its picture, and the CLI; and
the queue's watcher (flows.dvc_queue) on a real DVC queue of a project whose one stage sleeps as
long as its params say: an experiment killed past its timeout, a stalled queue restarted, one
that stays stalled reported stuck, and no queue worker or stage left running, even when the
watch is interrupted."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.prefect_client import artifact
from tests.sitecustom import sitecustomize_env
from tests.tiny_project import commit, env, run


def experiment_accuracy(root: Path, name: str) -> float:
    """An experiment's test accuracy as `dvc exp show` reports it (its reports/evaluate/metrics.json)."""
    for row in json.loads(run(root, "dvc", "exp", "show", "--json")):
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                if name in (rev.get("name"), rev.get("rev")):
                    return rev["data"]["metrics"]["reports/evaluate/metrics.json"]["data"]["accuracy"]
    raise AssertionError(f"dvc exp show lists no experiment {name!r}")


# Tiny experiments: no fp16/int8 variants to build, one round of benchmark timing.
FAST = ["export.variants=[]", "benchmark.batch_sizes=[4]"]


def test_compare_runs_an_experiment_in_a_copy_and_ranks_it(reproduced) -> None:
    from flows.compare import compare_backbones

    root = reproduced["b"]
    params = (root / "params.yaml").read_text()
    state = compare_backbones(
        backbones=["mobilenet"],
        overrides=["model.weights=none", *FAST],
        backbone_overrides={"mobilenet": ["model.alpha=0.25"]},
        project_dir=str(root),
        return_state=True,
    )
    assert state.is_completed(), state.message
    (row,) = artifact(state.state_details.flow_run_id, "backbone-leaderboard")
    assert row["status"] == "success" and row["rank"] == 1 and row["overrides"].endswith("model.alpha=0.25")
    # Random weights (none mirrored for α=0.25) learn nothing in one tiny epoch: no floor to assert,
    # but the accuracy ranked is the experiment's own test accuracy, as DVC recorded it.
    assert row["accuracy"] == pytest.approx(experiment_accuracy(root, row["experiment"]))
    assert row["model_mb"] > 0 and row["throughput_img_s"] > 0
    assert row["train_s"] > 0 and row["run_s"] > row["train_s"]
    plot = artifact(state.state_details.flow_run_id, "backbone-leaderboard-plot")
    assert plot.startswith("![accuracy against throughput](data:image/png;base64,")
    assert (root / "reports/compare/leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    assert row["experiment"] in run(root, "dvc", "exp", "show", "--json")
    # The workspace is the user's: the experiment ran in a temporary copy.
    assert (root / "params.yaml").read_text() == params
    assert "up to date" in run(root, "dvc", "status")


# In each experiment's train stage: wait (up to 300 s) until the other experiment's train stage has
# started too, and record how many met. Two train stages meet only if the queue runs both at once.
MEET = """
import os
import time

if running("stages.train"):
    meet = {meet!r}
    open(os.path.join(meet, f"{{os.getpid()}}.arrived"), "w").close()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        arrived = [f for f in os.listdir(meet) if f.endswith(".arrived")]
        if len(arrived) >= 2:
            break
        time.sleep(0.1)
    with open(os.path.join(meet, f"{{os.getpid()}}.met"), "w") as f:
        f.write(str(len(arrived)))
"""


def test_the_queue_runs_two_at_once_and_a_failing_experiment_is_reported(reproduced, prefect_server, tmp_path) -> None:
    root = reproduced["b"]
    meet = tmp_path / "meet"
    meet.mkdir()
    site = sitecustomize_env(tmp_path / "site", MEET.format(meet=str(meet)))
    cli = [sys.executable, "-m", "flows.compare", "mobilenetv2", "mobilenet", "--jobs", "2"]
    cli += [arg for override in FAST for arg in ("-S", override)]
    cli += ["--backbone-set", "mobilenet", "model.alpha=0.25"]
    cli += ["--backbone-set", "mobilenet", "model.weights=missing.weights.h5"]
    proc = subprocess.run(
        cli, cwd=root, env=env({**prefect_server, **site}), capture_output=True, text=True, timeout=900
    )
    out = proc.stdout + proc.stderr
    # The flow fails after reporting: the failed row names the error, the other row is complete.
    assert proc.returncode == 1, out[-3000:]
    assert "1 of 2 experiments failed: mobilenet" in out
    # The two experiments' train stages ran at the same time: each waited for the other and met it.
    met = [m.read_text() for m in meet.glob("*.met")]
    assert met == ["2", "2"], f"train stages that met another: {met} (1: it ran alone)"
    with (root / "reports/compare/leaderboard.csv").open() as f:
        rows = {r["backbone"]: r for r in csv.DictReader(f)}
    ok, failed = rows["mobilenetv2"], rows["mobilenet"]
    assert ok["status"] == "success" and ok["rank"] == "1"
    assert float(ok["accuracy"]) == pytest.approx(experiment_accuracy(root, ok["experiment"]), abs=1e-4)
    assert float(ok["run_s"]) > 0
    assert failed["status"] == "failed" and failed["rank"] == ""
    assert "model.weights='missing.weights.h5': file not found" in failed["error"]
    assert "failed" in (root / "reports/compare/leaderboard.md").read_text()
    assert "up to date" in run(root, "dvc", "status")
    assert wait_until(lambda: not queue_workers(root)), f"queue workers still running: {queue_workers(root)}"


def test_compare_cli_rejects_an_unknown_backbone_before_running_anything(reproduced, prefect_server) -> None:
    root = reproduced["b"]
    cli = [sys.executable, "-m", "flows.compare", "mobilenetv2", "mobilenetv9", "-S", "train.epochs=1"]
    proc = subprocess.run(cli, cwd=root, env=env(prefect_server), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "backbone='mobilenetv9' is not a known backbone" in proc.stdout + proc.stderr
    assert "Running stage" not in proc.stdout + proc.stderr


# ---------------------------------------------------------------- the queue's watcher, unit by unit

WORK = """\
import os
import time
from pathlib import Path

import yaml

work = yaml.safe_load(Path("params.yaml").read_text())["work"]
Path(work["log"], work["tag"] + ".pid").write_text(str(os.getpid()))
time.sleep(work["seconds"])
Path("out.txt").write_text(work["tag"] + "\\n")
"""


def queue_project(tmp_path: Path) -> Path:
    """A git + DVC project of one stage that writes its pid to log/<work.tag>.pid, then sleeps
    work.seconds: a real param, so an experiment's override decides how long it runs."""
    root, log = tmp_path / "project", tmp_path / "log"
    root.mkdir()
    log.mkdir()
    (root / "work.py").write_text(WORK)
    (root / "params.yaml").write_text(yaml.safe_dump({"work": {"tag": "base", "seconds": 0, "log": str(log)}}))
    stage = {"cmd": "python work.py", "deps": ["work.py"], "params": ["work"], "outs": ["out.txt"]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"work": stage}}))
    (root / ".gitignore").write_text("/out.txt\n")
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "dvc", "init", "-q")
    commit(root, "a stage that sleeps")
    return root


def queue(root: Path, name: str, seconds: float) -> None:
    run(root, "dvc", "exp", "run", "--queue", "-n", name, "-S", f"work.tag={name}", "-S", f"work.seconds={seconds}")


def watch(root: Path, names: list[str], **kwargs):
    from flows.dvc_queue import watch_queue

    options = {"jobs": 1, "timeout_s": 300, "stall_s": 300, "poll_s": 0.5, **kwargs}
    return watch_queue(root, names, logger=logging.getLogger("tests.queue"), **options)


def stage_pid(root: Path, name: str) -> int:
    return int((root.parent / "log" / f"{name}.pid").read_text())


def started(root: Path, name: str) -> Callable[[], bool]:
    return (root.parent / "log" / f"{name}.pid").exists


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_node(root: Path) -> str:
    """How DVC names this project's queue workers: dvc-exp-<hash of the queue's directory>-N@localhost."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return f"dvc-exp-{hashlib.sha256(repo.experiments.celery_queue.wdir.encode()).hexdigest()[:6]}-"


def queue_workers(root: Path, node: str | None = None) -> list[int]:
    """The pids of this project's DVC queue workers (`dvc exp queue-worker <node>N@localhost`)."""
    node = node or worker_node(root)
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"queue-worker" in argv and any(a.decode(errors="replace").startswith(node) for a in argv):
            found.append(int(proc.name))
    return [pid for pid in found if alive(pid)]


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> bool:
    """Whether `condition` holds within `timeout` seconds: a process's end takes the time it takes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def assert_nothing_left(root: Path, pids: list[int]) -> None:
    assert wait_until(lambda: not queue_workers(root)), f"queue workers still running: {queue_workers(root)}"
    assert wait_until(lambda: not any(alive(p) for p in pids)), f"stage processes still running: {pids}"


def test_the_watcher_kills_an_experiment_running_past_its_timeout(tmp_path) -> None:
    root = queue_project(tmp_path)
    queue(root, "slow", 600)
    # Time passes for the watcher only once the stage runs: the 1 s timeout always meets a sleeping
    # stage, never the queue's own set-up.
    is_running = started(root, "slow")
    runs = watch(root, ["slow"], timeout_s=1, clock=lambda: time.monotonic() if is_running() else 0.0)
    slow = runs["slow"]
    assert slow.state == "timed out" and slow.error == "killed after running for more than 1 s (compare timeout)"
    assert_nothing_left(root, [stage_pid(root, "slow")])
    assert not (root / "out.txt").exists()
    assert "Failed" in run(root, "dvc", "queue", "status")


def dying_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, deaths: int | None) -> Path:
    """DVC's queue workers exit as they start (the first `deaths` of them, or all with None): a
    queue that never starts its experiments, as in treeverse/dvc#8165. Returns the file that
    lists the workers that died."""
    died = tmp_path / "died"
    code = f"""
        import os
        import sys

        if "queue-worker" in sys.orig_argv:
            died = {str(died)!r}
            so_far = len(open(died).read().splitlines()) if os.path.exists(died) else 0
            if {deaths!r} is None or so_far < {deaths!r}:
                with open(died, "a") as f:
                    f.write(str(os.getpid()) + "\\n")
                os._exit(1)
    """
    for key, value in sitecustomize_env(tmp_path / "site", code).items():
        monkeypatch.setenv(key, value)
    return died


def stall_clock(root: Path) -> Callable[[], float]:
    """Time that passes only while no queue worker of `root` is alive: a stall is counted while the
    queue has no worker, never while a restarted one starts up, however slow the machine."""
    node, last, elapsed = worker_node(root), time.monotonic(), 0.0

    def clock() -> float:
        nonlocal last, elapsed
        now = time.monotonic()
        if not queue_workers(root, node):
            elapsed += now - last
        last = now
        return elapsed

    return clock


def test_a_queue_stalled_with_no_worker_is_restarted_once_and_then_runs(tmp_path, monkeypatch, caplog) -> None:
    root = queue_project(tmp_path)
    queue(root, "quick", 0)
    died = dying_workers(tmp_path, monkeypatch, deaths=1)
    with caplog.at_level(logging.WARNING, logger="tests.queue"):
        runs = watch(root, ["quick"], stall_s=2, clock=stall_clock(root))
    assert len(died.read_text().splitlines()) == 1  # the first worker never ran anything...
    restarts = [r.getMessage() for r in caplog.records if "restarting it" in r.getMessage()]
    assert restarts == ["DVC's queue made no progress for 2 s with no active worker: restarting it"]
    assert runs["quick"].state == "success"  # ...the restarted one ran the experiment
    assert "quick" in run(root, "dvc", "exp", "show", "--json")
    assert_nothing_left(root, [stage_pid(root, "quick")])


def test_a_queue_still_stalled_after_its_restart_reports_its_experiments_stuck(tmp_path, monkeypatch) -> None:
    root = queue_project(tmp_path)
    queue(root, "never", 0)
    died = dying_workers(tmp_path, monkeypatch, deaths=None)
    runs = watch(root, ["never"], stall_s=2)
    never = runs["never"]
    assert never.state == "stuck" and never.error == "no queue worker started it in 2 s (after a restart)"
    assert len(died.read_text().splitlines()) == 2  # the first start and the restart
    assert "never" not in run(root, "dvc", "queue", "status")  # taken off the queue
    assert not started(root, "never")()
    assert_nothing_left(root, [])


class Interrupted(Exception):
    """The watch stopped from outside (the flow cancelled, a poll that fails)."""


def test_an_interrupted_watch_leaves_no_experiment_or_worker_running(tmp_path) -> None:
    root = queue_project(tmp_path)
    queue(root, "slow", 600)
    queue(root, "waiting", 0)
    is_running = started(root, "slow")

    def clock() -> float:
        if is_running():
            raise Interrupted
        return time.monotonic()

    with pytest.raises(Interrupted):
        watch(root, ["slow", "waiting"], clock=clock)
    assert_nothing_left(root, [stage_pid(root, "slow")])
    status = run(root, "dvc", "queue", "status")
    assert "waiting" not in status and not started(root, "waiting")()  # it will not start later either
