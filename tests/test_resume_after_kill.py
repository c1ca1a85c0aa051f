"""A fine-tuning process killed with SIGKILL mid-epoch, rerun by the same `dvc repro` command,
ends with the same bytes as a run never killed (the README's promise), and the stage's backup is
what made that possible: the resume is logged and the best epoch comes after the kill."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

from tests.sitecustom import sitecustomize_env
from tests.test_reproduction import lock_entries
from tests.tiny_project import env, ran_stages, run


def backup_state(root: Path) -> dict:
    """The finetune stage's backup position."""
    backup = root / "data" / "checkpoints" / "finetune" / "backup.json"
    assert backup.is_file(), f"the finetune stage left no backup ({backup})"
    return json.loads(backup.read_text())


# Inside the finetune stage: right after Backups.save has written the first step backup (epoch 1,
# step 1 of 2), SIGKILL the whole process group (dvc, the shell and python) from there, exactly
# between two steps and the same way on every machine.
KILL_AFTER_FIRST_STEP_BACKUP = """
import os
import signal


def kill_after_the_first_step_backup(backups):
    save = backups.Backups.save

    def save_then_kill(self, model, state):
        save(self, model, state)
        if (state.epoch, state.step) == (0, 1):
            os.killpg(os.getpgrp(), signal.SIGKILL)

    backups.Backups.save = save_then_kill


if running("stages.finetune"):
    after_import("tlpipe.training.backups", kill_after_the_first_step_backup)
"""


def kill_at_first_backup(root: Path, site: Path, timeout: float = 300) -> dict:
    """Run `dvc repro -f -s finetune` with the stage set to SIGKILL its own process group right after
    its first step backup; return that backup's position."""
    proc = subprocess.run(
        ["dvc", "repro", "-f", "-s", "finetune"],
        cwd=root,
        env=env(sitecustomize_env(site, KILL_AFTER_FIRST_STEP_BACKUP)),
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,  # its own process group: dvc, the shell and python all get the signal
    )
    assert proc.returncode == -signal.SIGKILL, f"dvc was not killed ({proc.returncode}):\n{proc.stdout[-3000:]}"
    return backup_state(root)


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

    killed_at = kill_at_first_backup(root, tmp_path / "site")
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
