"""runtime.strategy: multi_worker for real: two worker processes on this machine (TF_CONFIG naming
two loopback ports) fine-tune the same head as one process with the same global batch and seed.

What must hold, and why only within a tolerance:

- the same number of training steps, on the same global batches (each worker keeps its half of
  every batch of the one input pipeline: tlpipe.training.step.DistributedStep.distribute);
- the two workers end with identical weights (the optimizer applies the same all-reduced
  gradients on both);
- against one process, the weights differ only by float32 summation order: one process sums the
  8 examples' gradients in one reduction, the cluster sums 4 + 4 and then all-reduces. Those
  1-ulp differences in the gradients pass through Adam, whose update m/(sqrt(v)+eps) is bounded
  by the learning rate per weight and step whatever the gradient's size, so a gradient component
  that is pure rounding noise can move a weight by up to lr in one step and not the other. The
  bound that holds by construction is steps × lr = 6e-3 here; the test asserts 1e-4 (1/60 of
  that bound; measured 1.1e-6 on this machine, so ~100× headroom for other CPUs' kernels), and
  that the validation accuracy moves by at most one of the 15 images;
- BatchNorm stays in inference mode (finetune freezes it) and dropout is 0 here: with dropout each
  replica draws masks for its own half batch, a different (equally valid) draw than one process's.

The non-chief worker writes nothing under models/ or reports/; the chief writes what one process
writes. Workers are subprocesses with timeouts: a hung collective fails the test, never CI."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, write_prepared
from tests.test_train import tiny_params, train_run
from tlpipe.paths import Paths

# One role of the comparison: `ref` (runtime.strategy none) or a worker of the TF_CONFIG cluster.
SCENARIO = r"""
import json, os, signal, sys, time
from pathlib import Path

import keras
import numpy as np

from stages import finetune, train
from stages.cli import exit_on_bad_input
from tests.test_multi_worker import scenario_params
from tlpipe.paths import Paths

root, strategy, out, stage = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]


class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.steps = 0
        self.weights = None

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == int(os.environ.get("KILL_ME_AFTER_STEPS", 0)):  # a worker lost mid-run
            os.kill(os.getpid(), signal.SIGKILL)

    def on_epoch_end(self, epoch, logs=None):
        self.weights = self.model.get_weights()  # the last epoch's, before the best is restored


record = Record()
t0 = time.perf_counter()
with exit_on_bad_input():  # as `python -m stages.finetune`: one line for a lost worker
    run = {"train": train, "finetune": finetune}[stage].run
    metrics = run(scenario_params(strategy), Paths(root), callbacks=[record])
seconds = time.perf_counter() - t0
np.savez(out.with_suffix(".npz"), *record.weights)
out.write_text(json.dumps({"steps": record.steps, "metrics": metrics, "seconds": seconds}))
"""

EPOCHS, STEPS, LEARNING_RATE = 2, 3, 1e-3
TOLERANCE = 1e-4  # max |weight difference| against one process: see the module docstring


def scenario_params(strategy: str):
    return tiny_params(
        model={"dropout": 0.0},
        finetune={
            "epochs": EPOCHS,
            "steps_per_epoch": STEPS,
            "learning_rate": LEARNING_RATE,
            "backup_every_steps": 2,
            "early_stopping": {"enabled": False},
        },
        runtime={"strategy": strategy},
    )


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def env_for(tf_config: dict | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def start(
    root: Path,
    strategy: str,
    out: Path,
    tf_config: dict | None,
    extra_env: dict[str, str] | None = None,
    stage: str = "finetune",
) -> subprocess.Popen:
    log = open(out.with_suffix(".log"), "w")
    return subprocess.Popen(
        [sys.executable, "-c", SCENARIO, str(root), strategy, str(out), stage],
        cwd=root,
        env={**env_for(tf_config), **(extra_env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(procs: list[subprocess.Popen], outs: list[Path], timeout: float, check: bool = True) -> None:
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0 or not check, (
            f"{out.stem} failed ({proc.returncode}):\n{out.with_suffix('.log').read_text()[-4000:]}"
        )


def cluster(ports: list[int]) -> dict:
    return {"worker": [f"127.0.0.1:{p}" for p in ports]}


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for base in ("models", "reports") for p in (root / base).rglob("*"))


@pytest.fixture(scope="module")
def head_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multi_worker") / "project"
    write_prepared(root / "data" / "prepared", ["cat", "dog", "frog"])
    train_run(tiny_params(model={"dropout": 0.0}), Paths(root))
    return root


def start_cluster(
    roots: list[Path], outs: list[Path], extra_env: list[dict[str, str]] | None = None, stage: str = "finetune"
) -> list:
    ports = free_ports(len(roots))
    return [
        start(
            root,
            "multi_worker",
            out,
            {"cluster": cluster(ports), "task": {"type": "worker", "index": i}},
            (extra_env or [{}] * len(roots))[i],
            stage,
        )
        for i, (root, out) in enumerate(zip(roots, outs, strict=True))
    ]


@pytest.fixture(scope="module")
def uninterrupted(head_project: Path, tmp_path_factory) -> dict:
    """One process, then a cluster of two workers (w0, w1: two machines' checkouts), from the same head."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    roots = {name: tmp / name for name in ("one", "w0", "w1")}
    for root in roots.values():
        shutil.copytree(head_project, root)
    outs = {name: tmp / f"{name}.json" for name in roots}
    t0 = time.perf_counter()
    finish([start(roots["one"], "none", outs["one"], None)], [outs["one"]], timeout=300)
    one_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    finish(start_cluster([roots["w0"], roots["w1"]], [outs["w0"], outs["w1"]]), [outs["w0"], outs["w1"]], timeout=300)
    two_seconds = time.perf_counter() - t0
    return {
        "head": head_project,
        "roots": roots,
        "runs": {n: json.loads(outs[n].read_text()) for n in outs},
        "weights": {n: list(np.load(outs[n].with_suffix(".npz")).values()) for n in outs},
        "seconds": (one_seconds, two_seconds),
    }


def test_two_workers_train_as_one_process_on_the_same_global_batch(uninterrupted: dict) -> None:
    roots, weights = uninterrupted["roots"], uninterrupted["weights"]
    one, w0, w1 = (uninterrupted["runs"][n] for n in ("one", "w0", "w1"))
    assert one["steps"] == w0["steps"] == w1["steps"] == EPOCHS * STEPS
    # The workers agree exactly: the same all-reduced update on both.
    assert all(np.array_equal(a, b) for a, b in zip(weights["w0"], weights["w1"], strict=True))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights["one"], weights["w0"], strict=True))
    bound = EPOCHS * STEPS * LEARNING_RATE
    one_s, two_s = uninterrupted["seconds"]
    loop = {n: json.loads((roots[n] / "reports/finetune/timings.json").read_text())["seconds"] for n in ("one", "w0")}
    print(
        f"wall: one process {one_s:.1f}s, two workers {two_s:.1f}s (training loop {loop['one']}s, {loop['w0']}s); "
        f"max |dw| {diff:.3g} (bound {bound:.3g})"
    )
    assert diff <= TOLERANCE < bound, diff
    val_images = 15
    assert abs(one["metrics"]["val"]["accuracy"] - w0["metrics"]["val"]["accuracy"]) <= 1 / val_images + 1e-9
    # Only the chief wrote: the other worker's models/ and reports/ are as they were.
    assert w1["metrics"] == {}
    assert listing(roots["w1"]) == listing(uninterrupted["head"])
    assert listing(roots["w0"]) == listing(roots["one"])


def test_a_lost_worker_fails_the_other_in_one_line_and_a_rerun_resumes_bit_identical(
    uninterrupted: dict, tmp_path: Path
) -> None:
    roots = [tmp_path / "w0", tmp_path / "w1"]
    for root in roots:
        shutil.copytree(uninterrupted["head"], root)
    outs = [tmp_path / "killed0.json", tmp_path / "killed1.json"]
    # Worker 1 dies (SIGKILL) after 4 steps: epoch 2, step 1; the chief's last backup is epoch 2 step 0.
    fast = {"TLPIPE_COLLECTIVE_TIMEOUT": "60"}
    procs = start_cluster(roots, outs, [fast, {**fast, "KILL_ME_AFTER_STEPS": str(STEPS + 1)}])
    finish(procs, outs, timeout=300, check=False)
    assert procs[1].returncode == -9
    assert procs[0].returncode == 1
    errors = [line for line in outs[0].with_suffix(".log").read_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lost /job:worker/task:1 of the multi-worker cluster" in errors[0], errors
    assert not (roots[0] / "models" / "model.keras").exists()

    again = [tmp_path / "again0.json", tmp_path / "again1.json"]
    finish(start_cluster(roots, again), again, timeout=300)
    timings = json.loads((roots[0] / "reports" / "finetune" / "timings.json").read_text())
    assert timings["resumed"] == 1
    resumed = list(np.load(again[0].with_suffix(".npz")).values())
    other = list(np.load(again[1].with_suffix(".npz")).values())
    reference = uninterrupted["weights"]["w0"]
    assert all(np.array_equal(a, b) for a, b in zip(resumed, reference, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(other, reference, strict=True))
    assert json.loads(again[0].read_text())["metrics"]["best"] == uninterrupted["runs"]["w0"]["metrics"]["best"]


def test_the_head_trains_on_two_workers_as_in_one_process(tmp_path: Path) -> None:
    """The train stage (head on cached features) runs the same step: same steps, workers identical,
    one process matched within the same tolerance; the other worker writes its feature cache only."""
    roots = {name: tmp_path / name for name in ("one", "w0", "w1")}
    for root in roots.values():
        write_prepared(root / "data" / "prepared", ["cat", "dog", "frog"])
    outs = {name: tmp_path / f"{name}.json" for name in roots}
    finish([start(roots["one"], "none", outs["one"], None, stage="train")], [outs["one"]], timeout=300)
    finish(
        start_cluster([roots["w0"], roots["w1"]], [outs["w0"], outs["w1"]], stage="train"),
        [outs["w0"], outs["w1"]],
        300,
    )
    runs = {n: json.loads(outs[n].read_text()) for n in outs}
    weights = {n: list(np.load(outs[n].with_suffix(".npz")).values()) for n in outs}
    assert runs["one"]["steps"] == runs["w0"]["steps"] == runs["w1"]["steps"] > 0
    assert all(np.array_equal(a, b) for a, b in zip(weights["w0"], weights["w1"], strict=True))
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(weights["one"], weights["w0"], strict=True))
    assert diff <= TOLERANCE, diff
    assert runs["w1"]["metrics"] == {} and listing(roots["w1"]) == []
    assert listing(roots["w0"]) == listing(roots["one"])
