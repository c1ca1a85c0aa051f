"""`python -m stages.check_reproduction` on a copy of the reproduced tiny project, as another
machine has it after `dvc repro`: it passes when the reproduction matches the commit, and fails,
naming the file and metric, when a metric is beyond its tolerance or the data's bytes differ."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import env
from tests.tiny_project import run

TRACKED = ["reports/evaluate/metrics.json"]  # in git: a fresh clone has them
# In the DVC cache of the machine that reproduced (or after `dvc pull`); the benchmark's are never compared.
CACHED = [f"reports/{s}/metrics.json" for s in ("export", "finetune", "ingest", "train", "validate")]


@pytest.fixture
def machine(reproduced, tmp_path: Path) -> Path:
    """A copy of project `a` with the images and weights beside it; the shared one stays as it is."""
    shutil.copytree(reproduced["a"].parent, tmp_path / "machine", symlinks=True)
    return tmp_path / "machine" / "repo"


def check(root: Path, *args: str) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "stages.check_reproduction", *args]
    proc = subprocess.run(cmd, cwd=root, env=env(), capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def edit(root: Path, path: str, **changes: float) -> None:
    """Add to metrics of a metrics file (dotted names for nested ones), as another CPU might have."""
    data = json.loads((root / path).read_text())
    for name, delta in changes.items():
        *parents, leaf = name.split("__")
        node = data
        for part in parents:
            node = node[part]
        node[leaf] += delta
    (root / path).write_text(json.dumps(data, indent=4) + "\n")


def leaves(value: Any) -> int:
    """How many metrics DVC finds in a metrics file: its numbers, booleans and strings."""
    if isinstance(value, dict):
        return sum(leaves(v) for v in value.values())
    return int(isinstance(value, (int, float, str)))


def test_a_reproduction_passes_and_every_metric_of_the_tracked_files_is_compared(machine: Path) -> None:
    assert run(machine, "git", "ls-files", "reports").split() == TRACKED
    code, out = check(machine)
    assert code == 0, out
    metrics = sum(leaves(json.loads((machine / p).read_text())) for p in TRACKED + CACHED)
    assert f"reproduced: ingest and validate byte for byte, {metrics} metrics within tolerance of HEAD" in out
    assert "skipped" not in out


def test_cached_metrics_the_dvc_cache_lacks_are_skipped_by_name_and_the_rest_compared(machine: Path) -> None:
    lock = yaml.safe_load((machine / "dvc.lock").read_text())
    (train,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "reports/train/metrics.json"]
    digest = train["md5"]
    (machine / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]).unlink()  # never pulled here
    code, out = check(machine)
    assert code == 0, out
    assert "reports/train/metrics.json: skipped: HEAD's copy is not in the DVC cache" in out
    metrics = sum(leaves(json.loads((machine / p).read_text())) for p in TRACKED + CACHED)
    train_metrics = leaves(json.loads((machine / "reports/train/metrics.json").read_text()))
    assert f"{metrics - train_metrics} metrics within tolerance of HEAD" in out


def test_metrics_beyond_their_tolerance_fail_and_are_named(machine: Path) -> None:
    edit(machine, "reports/evaluate/metrics.json", accuracy=-0.006)  # tolerance ±0.005
    edit(machine, "reports/train/metrics.json", best__epoch=1)  # no tolerance: must be equal
    code, out = check(machine)
    assert code == 1, out
    lines = out.splitlines()
    assert len(lines) == 3, out  # one line per metric, then the verdict
    assert lines[0].startswith("reports/evaluate/metrics.json: accuracy is ") and "(-0.006, tolerance ±0.005)" in out
    assert lines[1].startswith("reports/train/metrics.json: best.epoch is ") and "(+1, must be equal)" in out
    assert lines[2].startswith("not reproduced: 2 difference(s) from HEAD")


def test_metrics_within_their_tolerance_pass(machine: Path) -> None:
    edit(machine, "reports/evaluate/metrics.json", accuracy=-0.004, top5_accuracy=0.004, loss=0.019, ece=-0.009)
    edit(machine, "reports/finetune/metrics.json", best__val_accuracy=0.004, best__val_loss=-0.019)
    code, out = check(machine)
    assert code == 0, out


def test_other_bytes_from_ingest_fail_naming_the_output(machine: Path) -> None:
    # What a dvc repro that prepared other data leaves: other files, and their hash in dvc.lock.
    with (machine / "data" / "prepared" / "manifest.csv").open("a") as f:
        f.write("test,999,0,cat,other,synthetic\n")
    run(machine, "dvc", "commit", "-f", "ingest")
    code, out = check(machine)
    assert code == 1, out
    assert "dvc.lock: ingest's data/prepared: md5 " in out and "(must be the same bytes)" in out


def test_an_unknown_rev_is_an_error_that_names_it(machine: Path) -> None:
    code, out = check(machine, "--rev", "no-such-rev")
    assert code == 2 and "error: dvc.lock at no-such-rev:" in out, out
