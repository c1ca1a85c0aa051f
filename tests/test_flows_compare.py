"""The comparison flow on one machine: experiments in temporary copies (--temp), on DVC's queue
(--jobs 2, watched, a failing one reported), the leaderboard and its picture, and the CLI."""

from __future__ import annotations

import subprocess
import sys

from tests.prefect_client import artifact
from tests.tiny_project import env, run

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
    # Random weights (none mirrored for α=0.25) learn nothing in one tiny epoch: no floor to assert.
    assert 0 <= row["accuracy"] <= 1 and row["model_mb"] > 0 and row["throughput_img_s"] > 0
    assert row["train_s"] > 0 and row["run_s"] > row["train_s"]
    plot = artifact(state.state_details.flow_run_id, "backbone-leaderboard-plot")
    assert plot.startswith("![accuracy against throughput](data:image/png;base64,")
    assert (root / "reports/compare/leaderboard.png").read_bytes()[:4] == b"\x89PNG"
    assert row["experiment"] in run(root, "dvc", "exp", "show", "--json")
    # The workspace is the user's: the experiment ran in a temporary copy.
    assert (root / "params.yaml").read_text() == params
    assert "up to date" in run(root, "dvc", "status")


def test_the_queue_runs_two_at_once_and_a_failing_experiment_is_reported(reproduced) -> None:
    from flows.compare import compare_backbones

    root = reproduced["b"]
    state = compare_backbones(
        backbones=["mobilenetv2", "mobilenet"],
        overrides=FAST,
        backbone_overrides={"mobilenet": ["model.alpha=0.25", "model.weights=missing.weights.h5"]},
        jobs=2,
        poll_s=2,
        project_dir=str(root),
        return_state=True,
    )
    # The flow fails after reporting: the failed row names the error, the other row is complete.
    assert state.is_failed() and "1 of 2 experiments failed: mobilenet" in state.message
    rows = {r["backbone"]: r for r in artifact(state.state_details.flow_run_id, "backbone-leaderboard")}
    ok, failed = rows["mobilenetv2"], rows["mobilenet"]
    assert ok["status"] == "success" and ok["rank"] == 1 and ok["accuracy"] > 1 / 3 and ok["run_s"] > 0
    assert failed["status"] == "failed" and failed["rank"] is None
    assert "model.weights='missing.weights.h5': file not found" in failed["error"]
    assert "failed" in (root / "reports/compare/leaderboard.md").read_text()
    assert "up to date" in run(root, "dvc", "status")


def test_compare_cli_rejects_an_unknown_backbone_before_running_anything(reproduced, prefect_server) -> None:
    root = reproduced["b"]
    cli = [sys.executable, "-m", "flows.compare", "mobilenetv2", "mobilenetv9", "-S", "train.epochs=1"]
    proc = subprocess.run(cli, cwd=root, env=env(prefect_server), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "backbone='mobilenetv9' is not a known backbone" in proc.stdout + proc.stderr
    assert "Running stage" not in proc.stdout + proc.stderr
