"""train and finetune through real DVC: `dvc repro`, an experiment switching a param with -S, and
the metrics and plots that `dvc exp show` / `dvc plots show` read, in a fresh git+DVC repo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import MOBILENET_V2_035, REPO, sh
from tests.inputs import make_class_tree, tar_tree


@pytest.mark.slow
@pytest.mark.skipif(not MOBILENET_V2_035.is_file(), reason="shared weights not available")
def test_dvc_repro_and_experiments_compare_train_and_finetune_runs(tmp_path: Path) -> None:
    archive = tar_tree(
        make_class_tree(tmp_path / "src", ["cat", "dog", "frog"], {"train": 24}, size=32), tmp_path / "d.tgz"
    )
    repo = tmp_path / "repo"
    repo.mkdir()
    for sub in ("stages", "tlpipe", "presets"):
        shutil.copytree(REPO / sub, repo / sub, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"].update(path=str(archive), sha256=None)
    # The repo's own params.yaml, shrunk: 32 px, α=0.35 from the shared mirror, one short epoch.
    params["model"].update(image_size=32, alpha=0.35, weights_dir=str(MOBILENET_V2_035.parent))
    params["train"].update(epochs=2, batch_size=8)
    params["finetune"].update(
        epochs=1, batch_size=8, unfreeze={"top_layers": None, "top_blocks": 2, "from_block": None, "from_layer": None}
    )
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh("git", "init", "-q", "-b", "main", cwd=repo)
    sh("dvc", "init", "-q", cwd=repo)

    out = sh("dvc", "repro", "finetune", cwd=repo)
    assert "Running stage 'train'" in out and "Running stage 'finetune'" in out
    assert (repo / "data" / "features").is_dir() and (repo / "models" / "model.keras").is_file()
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "baseline", cwd=repo)
    baseline = json.loads((repo / "reports" / "finetune" / "metrics.json").read_text())

    # An experiment: only finetune reruns (train's params did not change), the cache survives.
    out = sh("dvc", "exp", "run", "-n", "lr", "-S", "finetune.learning_rate=0.001", "finetune", cwd=repo)
    assert "Running stage 'finetune'" in out and "Running stage 'train'" not in out
    rows = json.loads(sh("dvc", "exp", "show", "--json", cwd=repo))
    runs = {
        r.get("name") or r["rev"]: r
        for row in rows
        for r in [row, *[e for ex in row.get("experiments") or [] for e in ex["revs"]]]
    }
    # What exp show reports is each run's own metrics file: the baseline's, and the experiment's
    # (which `dvc exp run` left in the workspace).
    latest = json.loads((repo / "reports" / "finetune" / "metrics.json").read_text())
    for name, expected in (("main", baseline), ("lr", latest)):
        metrics = runs[name]["data"]["metrics"]
        assert metrics["reports/finetune/metrics.json"]["data"]["best"] == expected["best"], name
        assert metrics["reports/train/metrics.json"]["data"]["epochs_run"] == 2, name
    assert runs["lr"]["data"]["params"]["params.yaml"]["data"]["finetune"]["learning_rate"] == 0.001

    plots = json.loads(sh("dvc", "plots", "show", "--json", cwd=repo))
    shown = " ".join(plots["data"])
    for curve in ("train/plots/metrics/train/loss.tsv", "finetune/plots/metrics/val/accuracy.tsv"):
        assert curve in shown, sorted(plots["data"])
    assert not [e for e in plots.get("errors") or [] if "reports/train" in str(e) or "reports/finetune" in str(e)]
