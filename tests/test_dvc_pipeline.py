"""The data half through real DVC: `dvc repro` in a fresh repo, then a push/clone/pull round trip."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.conftest import BIN, REPO, sh
from tests.inputs import make_class_tree, tar_tree


def project_copy(dest: Path, data_path: Path) -> Path:
    """A fresh git+DVC repo holding the project's code and pipeline, pointed at `data_path`."""
    for code in ("stages", "tlpipe"):
        shutil.copytree(REPO / code, dest / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", dest / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(source="folder", path=str(data_path), sha256=None)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text("__pycache__/\n")
    sh("git", "init", "-q", "-b", "main", cwd=dest)
    sh("dvc", "init", "-q", cwd=dest)
    return dest


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_repro_push_clone_pull_round_trip(tmp_path: Path) -> None:
    archive = tar_tree(make_class_tree(tmp_path / "src", ["cat", "dog"], {"train": 15}), tmp_path / "imgs.tar.gz")
    repo = project_copy(tmp_path / "repo", archive)

    out = sh("dvc", "repro", "validate", cwd=repo)
    assert "Running stage 'ingest'" in out and "Running stage 'validate'" in out
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"ingest", "validate"}
    assert "Stage 'ingest' didn't change" in sh("dvc", "repro", "validate", cwd=repo)

    remote = tmp_path / "remote"
    sh("dvc", "remote", "add", "-d", "store", str(remote), cwd=repo)
    sh("dvc", "push", "ingest", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "data", cwd=repo)

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    assert not (clone / "data" / "prepared").exists()
    sh("dvc", "pull", "ingest", cwd=clone)
    assert digests(clone / "data" / "prepared") == digests(repo / "data" / "prepared")
    assert "didn't change" in sh("dvc", "status", "ingest", cwd=clone) or "up to date" in sh(
        "dvc", "status", "ingest", cwd=clone
    )


def test_repro_stops_before_downstream_when_validation_fails(tmp_path: Path) -> None:
    tree = make_class_tree(tmp_path / "src", ["cat", "dog"], {"train": 15, "test": 4})
    (tree / "test" / "dog" / "leak.png").write_bytes((tree / "train" / "dog" / "0003.png").read_bytes())
    repo = project_copy(tmp_path / "repo", tree)
    env_path = f"{BIN}{os.pathsep}{os.environ['PATH']}"
    proc = subprocess.run(
        ["dvc", "repro"], cwd=repo, capture_output=True, text=True, env={**os.environ, "PATH": env_path}, timeout=600
    )
    assert proc.returncode != 0
    assert "splits_sharing_image" in proc.stdout + proc.stderr
    lock = yaml.safe_load((repo / "dvc.lock").read_text()) if (repo / "dvc.lock").exists() else {"stages": {}}
    assert "validate" not in lock["stages"]
    assert not (repo / "models" / "head.keras").exists()
