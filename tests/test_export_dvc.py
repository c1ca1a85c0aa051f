"""`dvc repro` runs evaluate, export, benchmark and model_card from the project's own dvc.yaml.

A scratch project holds the tiny model and data, this repository's stage code and the project's
dvc.yaml reduced to those four stages (the upstream stages would need the real data). It checks
the DAG wiring, the metrics DVC reads, and that a second `dvc repro` does not re-measure.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.tiny_models import tiny_params, tiny_project

STAGES = ("evaluate", "export", "benchmark", "model_card")


def sh(root: Path, *cmd: str) -> str:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
    }
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is needed for the lineage part of the model card")
    source = tiny_project(tmp_path_factory)
    root = tmp_path_factory.mktemp("dvc_project")
    shutil.copytree(source / "data" / "prepared", root / "data" / "prepared")
    (root / "models").mkdir()
    shutil.copy(source / "models" / "model.keras", root / "models" / "model.keras")
    for code in ("stages", "tlpipe"):
        shutil.copytree(REPO / code, root / code, ignore=shutil.ignore_patterns("__pycache__"))
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    dvc["stages"] = {k: v for k, v in dvc["stages"].items() if k in STAGES}
    (root / "dvc.yaml").write_text(yaml.safe_dump(dvc, sort_keys=False))
    (root / "params.yaml").write_text(
        yaml.safe_dump(tiny_params().model_dump(by_alias=True, mode="json"), sort_keys=False)
    )
    (root / ".gitignore").write_text("/data/\n/models/\n/reports/\n")
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    sh(root, "git", "add", "-A")
    sh(root, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny project")
    sh(root, "dvc", "repro", "model_card")
    return root


def test_dvc_repro_runs_the_four_stages(dvc_project: Path) -> None:
    lock = yaml.safe_load((dvc_project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    metrics = json.loads(sh(dvc_project, "dvc", "metrics", "show", "--json"))
    flat = json.dumps(metrics)
    for key in ('"accuracy"', '"top1_agreement"', '"onnx-fp32_vs_keras"'):
        assert key in flat
    card = (dvc_project / "reports" / "model_card" / "model_card.md").read_text()
    onnx_md5 = next(o["md5"] for o in lock["stages"]["export"]["outs"] if o["path"] == "models/model.onnx")
    assert onnx_md5 in card and "## Intended use" in card and "## Known limits" in card
    # Lineage names what the card describes by the hashes DVC records, not by a git commit.
    keras_md5 = hashlib.md5((dvc_project / "models" / "model.keras").read_bytes()).hexdigest()
    assert f"`models/model.keras`: `{keras_md5}`" in card and "git commit" not in card
    assert "| onnx-int8 | CPUExecutionProvider |" in card
    sh(dvc_project, "dvc", "plots", "show", "--json")


def test_second_repro_does_not_remeasure(dvc_project: Path) -> None:
    results = dvc_project / "reports" / "benchmark" / "results.json"
    before = results.read_text()
    out = sh(dvc_project, "dvc", "repro", "model_card")
    assert "Running stage" not in out
    assert results.read_text() == before
    assert json.loads(sh(dvc_project, "dvc", "status", "--json")) == {}
