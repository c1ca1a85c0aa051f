"""Experiments on DVC's own queue, watched so that a stuck or failed one never hangs the caller.

`dvc exp run --run-all -j N` blocks until DVC's queue is empty, and DVC's queue has known hangs
with several workers (treeverse/dvc#8165, #10398, #10562: workers that never pick a task up,
tasks reported running after their worker died, `--run-all` not returning). So the queue is
started with `dvc queue start -j N` and watched through `dvc queue status`, each call with a
timeout of its own: an experiment running past `timeout_s` is killed (`dvc queue kill`), a
queue that makes no progress for `stall_s` with nothing running gets its workers restarted once
and is then given up on, and the workers are stopped at the end whatever happened (an
interrupted watch kills the experiments still running and removes those still waiting). Each
experiment's wall time is measured from the first poll that sees it running (or, if it ran
between two polls, the last that saw it waiting) to the first that sees it done, so to within
`poll_s`, and a failed one's reason comes from `dvc queue logs`.
"""

from __future__ import annotations

import logging
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from flows import dvc_runner

FINAL = ("success", "failed", "timed out", "stuck")
logging.getLogger("flows.dvc_queue.quiet").propagate = False  # polls stay out of the run log
_ROW = re.compile(
    r"^(?P<task>[0-9a-f]{7,})\s+(?P<name>\S+)\s+.*?\s(?P<status>Queued|Running|Success|Failed|Unknown)\s*$"
)
_WORKERS = re.compile(r"Worker status: (?P<active>\d+) active, (?P<idle>\d+) idle")


@dataclass
class QueuedRun:
    name: str
    state: str = "queued"  # queued, running, then one of FINAL
    started: float | None = None
    finished: float | None = None
    error: str | None = None

    @property
    def seconds(self) -> float | None:
        return self.finished - self.started if self.started is not None and self.finished is not None else None


def parse_status(output: str) -> tuple[dict[str, str], int]:
    """`dvc queue status` → ({experiment name: status in lower case}, active workers)."""
    states = {m["name"]: m["status"].lower() for line in output.splitlines() if (m := _ROW.match(line.strip()))}
    workers = _WORKERS.search(output)
    return states, int(workers["active"]) if workers else 0


def watch_queue(
    root: Path,
    names: Sequence[str],
    *,
    jobs: int,
    timeout_s: float,
    stall_s: float = 300.0,
    poll_s: float = 10.0,
    logger: logging.Logger | logging.LoggerAdapter,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, QueuedRun]:
    """Start DVC's queue with `jobs` workers and watch `names` (queued already) until each is done."""
    runs = {name: QueuedRun(name) for name in names}
    dvc = _Dvc(root, logger)
    dvc.start(jobs)
    restarted = False
    last_change = clock()
    last_queued = dict.fromkeys(names, last_change)  # when each was last seen waiting
    try:
        while any(r.state not in FINAL for r in runs.values()):
            time.sleep(poll_s)
            asked = clock()
            states, active = parse_status(dvc("queue", "status", quiet=True))
            now = clock()
            for run in (r for r in runs.values() if r.state not in FINAL):
                seen = states.get(run.name, "unknown")
                if seen != run.state:
                    last_change = now
                if seen == "queued":
                    last_queued[run.name] = asked
                elif seen == "running" and run.started is None:
                    run.state, run.started = "running", now
                elif seen in ("success", "failed"):
                    # One that ran between two looks started after the last look that saw it waiting.
                    run.state, run.finished = seen, now
                    run.started = run.started if run.started is not None else last_queued[run.name]
                    if seen == "failed":
                        run.error = dvc_runner.failure_reason(dvc("queue", "logs", run.name, check=False).splitlines())
                elif seen == "running" and now - run.started > timeout_s:
                    dvc("queue", "kill", run.name, check=False)
                    run.state, run.finished = "timed out", now
                    run.error = f"killed after running for more than {timeout_s:g} s (compare timeout)"
            waiting = [r for r in runs.values() if r.state == "queued"]
            if waiting and active == 0 and now - last_change > stall_s:
                if not restarted:
                    logger.warning(
                        "DVC's queue made no progress for %.0f s with no active worker: restarting it", stall_s
                    )
                    dvc.start(jobs)
                    restarted, last_change = True, now
                    continue
                for run in waiting:
                    dvc("queue", "remove", run.name, check=False)
                    run.state, run.error = "stuck", f"no queue worker started it in {stall_s:g} s (after a restart)"
    finally:
        # Interrupted (the flow cancelled, a poll failing): a graceful `dvc queue stop` would let a
        # running experiment run to its end, and `stop --kill` leaves its stage's process running
        # (DVC 3.67); `dvc queue kill` ends both. A waiting one leaves the queue first (else the
        # worker freed by a kill starts it), and the next `dvc queue start` will not run it either.
        unfinished = [r.name for r in runs.values() if r.state not in FINAL]
        for _ in range(3 if unfinished else 0):
            states, _ = parse_status(dvc("queue", "status", check=False, quiet=True))
            live = [(states[n], n) for n in unfinished if states.get(n) in ("queued", "running")]
            for state, name in sorted(live):  # "queued" before "running"
                dvc("queue", "remove" if state == "queued" else "kill", name, check=False)
            if not live:
                break
        if dvc_runner.run_dvc(["queue", "stop"], root, logger, check=False, timeout=120).returncode != 0:
            dvc("queue", "stop", "--kill", check=False)
    return runs


class _Dvc:
    """`dvc <args>` with a time limit; its output as text."""

    def __init__(self, root: Path, logger: logging.Logger | logging.LoggerAdapter) -> None:
        self.root, self.logger = root, logger

    def __call__(self, *args: str, check: bool = True, quiet: bool = False) -> str:
        logger = logging.getLogger("flows.dvc_queue.quiet") if quiet else self.logger
        return dvc_runner.run_dvc(list(args), self.root, logger, check=check, timeout=120).output

    def start(self, jobs: int) -> None:
        """`dvc queue start -j <jobs>`, waited for until it exits. Not until its output ends, as
        run_dvc does: the workers it leaves running (forks of it) hold its stdout open until the
        queue is empty, and nothing would be watched until then."""
        args = ["queue", "start", "-j", str(jobs)]
        self.logger.info("$ dvc %s", " ".join(args))
        with tempfile.TemporaryFile("w+", errors="replace") as out:
            try:
                proc = subprocess.run(
                    [*dvc_runner.DVC, *args],
                    cwd=self.root,
                    env=dvc_runner.dvc_env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=120,
                )
                returncode = proc.returncode
            except subprocess.TimeoutExpired:
                returncode = -9
            out.seek(0)
            lines = [line.rstrip() for line in out.read().splitlines() if line.strip()]
        for line in lines:
            self.logger.info("%s", line)
        if returncode != 0:
            if returncode == -9:
                lines.append(f"error: `dvc {' '.join(args)}` did not finish in 120 s and was killed")
            raise dvc_runner.DvcError(args, returncode, dvc_runner.failure_reason(lines), self.root)
