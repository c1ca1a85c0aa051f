"""A fine-tuning process killed with SIGKILL mid-epoch, rerun by the same `dvc repro` command,
ends with the same bytes as a run never killed (the README's promise), and the stage's backup is
what made that possible: the resume is logged and the best epoch comes after the kill."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.test_reproduction import lock_entries
from tests.tiny_project import env, ran_stages, run


def backup_state(root: Path) -> dict | None:
    """The finetune stage's backup position, or None while there is none (or it is being written)."""
    try:
        return json.loads((root / "data" / "checkpoints" / "finetune" / "backup.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def kill_at_first_backup(root: Path, timeout: float = 300) -> dict:
    """Start `dvc repro -f -s finetune`, SIGKILL its whole process group as soon as a step backup of
    the first epoch exists, and return that backup's position."""
    proc = subprocess.Popen(
        ["dvc", "repro", "-f", "-s", "finetune"],
        cwd=root,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: dvc, the shell and python all get the signal
    )
    deadline = time.monotonic() + timeout
    try:
        while (state := backup_state(root)) is None or state["step"] < 1:
            assert proc.poll() is None, "finetune ended before its first step backup"
            assert time.monotonic() < deadline, "no step backup within the timeout"
            time.sleep(0.002)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return state


def test_a_finetune_killed_mid_epoch_resumes_under_dvc_repro_and_ends_byte_identical(reproduced, tmp_path) -> None:
    # A copy of a reproduced project (its images and weights beside it): its committed dvc.lock
    # holds the hashes of an uninterrupted run with these params, the reference.
    source = reproduced["a"]
    shutil.copytree(source.parent, tmp_path / "a", symlinks=True)
    root = tmp_path / "a" / source.name
    reference = json.loads((root / "reports" / "finetune" / "metrics.json").read_text())
    committed = tmp_path / "committed"
    committed.mkdir()
    shutil.copy(root / "dvc.lock", committed / "dvc.lock")

    killed_at = kill_at_first_backup(root)
    assert (killed_at["epoch"], killed_at["step"]) == (0, 1)  # mid-epoch: 1 of 2 steps of epoch 1
    assert not (root / "models" / "model.keras").exists()  # DVC removed it; nothing half-written came back

    # The command that was killed, run again (-f: DVC would otherwise restore the committed outputs).
    out = run(root, "dvc", "repro", "-f", "-s", "finetune")
    assert ran_stages(out) == ["finetune"], out
    assert "finetune: resuming from epoch 1 step 1" in out
    timings = json.loads((root / "reports" / "finetune" / "timings.json").read_text())
    assert timings["resumed"] == 1
    metrics = json.loads((root / "reports" / "finetune" / "metrics.json").read_text())
    assert metrics == reference and metrics["best"]["epoch"] > killed_at["epoch"] + 1  # trained after the kill
    # dvc.lock as committed: model.keras and every result have the uninterrupted run's bytes
    # (the timings of the run, which record the resume, aside).
    before, after = lock_entries(committed), lock_entries(root)
    assert set(before) == set(after)
    assert [key for key in before if before[key] != after[key]] == [
        ("finetune", "outs", "reports/finetune/timings.json")
    ]
