"""A thin wrapper around DVC: commands run as subprocesses with their output streamed to a logger,
and read-only questions (which stages, in which order, which are out of date) asked of DVC's API.

Not named dvc.py: a worker loading `flows/pipeline.py` puts flows/ on sys.path, where a dvc.py
would shadow the dvc package itself.

DVC stays the single source of truth: nothing here decides whether a stage is up to date, it
asks DVC (`Repo.status`, the same check `dvc status` prints) and lets `dvc repro` do the work.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("flows.dvc_runner")

# `python -m dvc` from the interpreter running the flow: a Prefect worker's PATH may not hold
# the project's virtual environment, and a `dvc` from elsewhere would run other versions.
DVC = (sys.executable, "-m", "dvc")

# Lines that start a stage's or DVC's own error report: what a failed run shows as its reason.
_ERROR_START = re.compile(r"^(error:|ERROR:|Traceback \(most recent call last\)|\w+(Error|Exception): )")
_ERROR_LINE = re.compile(r"^(error:|ERROR:)")
_WARNING_LINE = re.compile(r"^(warning:|WARNING:)")

# What `dvc repro` prints for each stage (dvc/stage/__init__.py, dvc/stage/run.py, dvc/stage/cache.py).
Outcome = Literal["ran", "skipped", "restored"]
_OUTCOMES: tuple[tuple[str, Outcome], ...] = (
    ("Running stage '{}'", "ran"),
    ("Stage '{}' is cached - skipping run, checking out outputs", "restored"),
    ("Stage '{}' didn't change, skipping", "skipped"),
)


class DvcError(RuntimeError):
    """A DVC command exited non-zero. The message carries the command's own error lines."""

    def __init__(self, args: Sequence[str], returncode: int, reason: str, cwd: Path) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.reason = reason
        super().__init__(f"`dvc {' '.join(args)}` failed (exit {returncode}) in {cwd}:\n{reason}")


class UnknownStageError(ValueError):
    """A stage name that the project's dvc.yaml does not define."""


@dataclass
class DvcResult:
    args: list[str]
    returncode: int
    lines: list[str] = field(repr=False)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def dvc_env() -> dict[str, str]:
    """The environment of DVC and of the stage commands it starts."""
    env = dict(os.environ)
    # Stage commands are plain `python -m stages.x`: put this interpreter's bin first so they run in
    # the same environment as the flow, and unbuffered so their output streams as it happens.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    # TensorFlow takes nearly all of a GPU's memory in the first process that touches it, so a
    # second experiment on the same GPU (`flows.compare --jobs 2`) would fail with out-of-memory:
    # let each process grow its share instead (the user's own setting wins).
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    return env


def run_dvc(
    args: Sequence[str],
    cwd: str | Path,
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    check: bool = True,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> DvcResult:
    """Run `dvc <args>` in `cwd`, sending each output line to `logger` as it arrives.

    stderr is merged into stdout so that the log keeps DVC's and the stage's lines in order.
    A cancelled flow (KeyboardInterrupt, task timeout) terminates DVC instead of leaving it running,
    and so does `timeout` (seconds): a DVC command that hangs then fails instead of hanging the caller.
    """
    logger = logger or log
    cwd = Path(cwd)
    args = [str(a) for a in args]
    logger.info("$ dvc %s", " ".join(args))
    proc = subprocess.Popen(
        [*DVC, *args],
        cwd=cwd,
        env={**dvc_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,  # universal newlines: progress bars' carriage returns become line breaks
        errors="replace",
        bufsize=1,
    )
    lines: list[str] = []
    level = logging.INFO
    watchdog = threading.Timer(timeout, proc.kill) if timeout else None
    if watchdog:
        watchdog.daemon = True
        watchdog.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip()
            if not line:
                continue
            lines.append(line)
            if _ERROR_LINE.match(line):
                level = logging.ERROR
            elif _WARNING_LINE.match(line):
                level = logging.WARNING
            elif not line[:1].isspace():
                level = logging.INFO
            # else: an indented continuation keeps the level of the line it continues.
            logger.log(level, "%s", line)
        returncode = proc.wait()
    finally:
        if watchdog:
            watchdog.cancel()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if timeout and returncode == -9:
        lines.append(f"error: `dvc {' '.join(args)}` did not finish in {timeout:g} s and was killed")
    result = DvcResult(args, returncode, lines)
    if check and returncode != 0:
        raise DvcError(args, returncode, failure_reason(lines), cwd)
    return result


def failure_reason(lines: Sequence[str], max_lines: int = 40) -> str:
    """The part of the output that says why: from the first error line of the last 200 lines on."""
    tail = list(deque(lines, maxlen=200))
    start = next((i for i, line in enumerate(tail) if _ERROR_START.match(line)), None)
    picked = tail[start:] if start is not None else tail[-20:]
    if len(picked) > max_lines:
        picked = picked[: max_lines // 2] + ["..."] + picked[-max_lines // 2 :]
    return "\n".join(picked) or "(no output)"


def stage_outcome(stage: str, lines: Iterable[str]) -> Outcome | None:
    """What `dvc repro` did with `stage`, read from its own report lines."""
    found: Outcome | None = None
    for line in lines:
        for template, outcome in _OUTCOMES:
            if line.startswith(template.format(stage)):
                # A stage restored from the run cache is reported "cached" and then nothing else.
                found = "ran" if outcome == "ran" else found or outcome
    return found


# ---------------------------------------------------------------- read-only questions to DVC


@dataclass(frozen=True)
class Pipeline:
    """The project's stages in an order DVC can run them one by one."""

    order: tuple[str, ...]
    upstream: dict[str, frozenset[str]]  # every stage a stage depends on, directly or not
    metrics: dict[str, tuple[str, ...]]  # metrics files per stage, relative to the root
    # Params each stage declares: (params file relative to the root, keys; empty keys: the whole file).
    params: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = field(default_factory=dict)

    def select(self, stages: Sequence[str] | None) -> tuple[str, ...]:
        """`stages` and everything upstream of them (what `dvc repro <stages>` would consider), in order."""
        if not stages:
            return self.order
        unknown = [s for s in stages if s not in self.upstream]
        if unknown:
            raise UnknownStageError(
                f"unknown stage{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
                f"dvc.yaml defines {', '.join(self.order) or 'no stages'}"
            )
        wanted = set(stages).union(*(self.upstream[s] for s in stages))
        return tuple(s for s in self.order if s in wanted)

    def affected_by(self, keys: dict[str, Sequence[str]]) -> tuple[str, ...]:
        """Stages whose results change when the given params keys ({file: ["train.epochs"]}) change:
        those that declare one of them (or a section holding it), and everything downstream."""

        def declares(stage: str) -> bool:
            for file, declared in self.params.get(stage, ()):
                for key in keys.get(file, ()):
                    if not declared or any(
                        key == d or key.startswith(f"{d}.") or d.startswith(f"{key}.") for d in declared
                    ):
                        return True
            return False

        direct = {s for s in self.order if declares(s)}
        return tuple(s for s in self.order if s in direct or self.upstream[s] & direct)


def read_pipeline(root: str | Path) -> Pipeline:
    """Stages from the project's dvc.yaml files through DVC's own parser (templating, foreach and
    nested dvc.yaml included), ordered by the DAG and, between independent stages, by declaration."""
    import networkx as nx
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        # .dvc files of `dvc add` are stages too, with nothing to run: only pipeline stages count.
        stages = [s for s in repo.index.stages if getattr(s, "cmd", None)]
        position = {s: i for i, s in enumerate(stages)}
        graph = repo.index.graph.subgraph(stages)
        # DVC's edges point from a stage to the stages it depends on; run dependencies first.
        order = list(nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: position[s]))
        name = {s: stage_name(s, repo.root_dir) for s in stages}
        upstream = {name[s]: frozenset(name[d] for d in nx.descendants(graph, s)) for s in stages}
        metrics = {
            name[s]: tuple(os.path.relpath(o.fs_path, repo.root_dir) for o in s.outs if o.metric) for s in stages
        }
        params = {
            name[s]: tuple(
                (os.path.relpath(d.fs_path, repo.root_dir), tuple(d.params or ()))
                for d in s.deps
                if isinstance(d, ParamsDependency)
            )
            for s in stages
        }
    return Pipeline(tuple(name[s] for s in order), upstream, metrics, params)


def stage_name(stage: Any, root: str) -> str:
    """What `dvc repro` takes from the project root: `train`, or `sub/dvc.yaml:train` for a nested
    dvc.yaml. (DVC's own `addressing` is relative to this process's working directory instead.)"""
    dvcfile = os.path.relpath(stage.path, root)
    return stage.name if dvcfile == "dvc.yaml" else f"{dvcfile}:{stage.name}"


def changed_stages(root: str | Path, stages: Sequence[str] | None = None) -> set[str]:
    """Stages `dvc status` reports as changed (deps, params, outs, command, always_changed)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        names = {s.addressing: stage_name(s, repo.root_dir) for s in repo.index.stages if getattr(s, "cmd", None)}
        wanted = [a for a, n in names.items() if stages is None or n in stages]
        status = repo.status(targets=wanted) if wanted else {}
    return {names[a] for a in status if a in names}
