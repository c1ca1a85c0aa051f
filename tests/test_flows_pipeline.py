"""The pipeline flow for real: a Prefect server on loopback, DVC in a fresh git repo, tiny params.

The tiny project `b` of the `reproduced` fixture was reproduced by the pipeline flow; the tests
here rerun, break and repair it, and leave it as they found it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.prefect_client import artifact, log_text, outcomes
from tests.tiny_project import env, put_back, ran_stages, run


@pytest.fixture
def b(reproduced) -> Iterator[Path]:
    """The reproduced project `b`, put back as committed after the test, however it ended."""
    with put_back(reproduced["b"]) as root:
        yield root


def test_pipeline_flow_runs_every_stage_of_dvc_yaml_as_a_task(reproduced) -> None:
    root, state = reproduced["b"], reproduced["flow_state"]
    stages = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    ran = outcomes(state.state_details.flow_run_id)
    assert set(ran) == set(stages) and set(ran.values()) == {"ran"}
    # DVC did the work and kept the books: every stage is in dvc.lock and `dvc status` is clean.
    assert set(yaml.safe_load((root / "dvc.lock").read_text())["stages"]) == set(stages)
    assert "up to date" in run(root, "dvc", "status")

    logs = log_text(state.state_details.flow_run_id, expect=("Running stage 'train'", "python -m stages.train"))
    assert "Running stage 'train'" in logs and "python -m stages.train" in logs  # stage output streamed
    # TensorFlow's CUDA start-up chatter stays out of the logs on a machine without a GPU.
    assert "cuInit" not in logs and "Could not find cuda drivers" not in logs
    metrics = {
        (r["stage"], r["metric"]): r["value"] for r in artifact(state.state_details.flow_run_id, "pipeline-metrics")
    }
    evaluate = json.loads((root / "reports/evaluate/metrics.json").read_text())
    assert metrics[("evaluate", "accuracy")] == pytest.approx(evaluate["accuracy"])
    bench = json.loads((root / "reports/benchmark/metrics.json").read_text())
    assert metrics[("benchmark", "headline_batch")] == bench["headline_batch"] == 4
    assert metrics[("benchmark", "throughput_median.onnx-fp32")] == bench["throughput_median"]["onnx-fp32"]["b4"] > 0


def test_a_rerun_over_a_cached_pipeline_skips_every_stage(reproduced) -> None:
    from flows.pipeline import pipeline

    root = reproduced["b"]
    assert ran_stages(run(root, "dvc", "repro")) == []
    state = pipeline(project_dir=str(root), return_state=True)
    assert state.is_completed()
    assert set(outcomes(state.state_details.flow_run_id).values()) == {"skipped"}


def test_failing_stage_fails_the_flow_with_its_error_and_a_rerun_resumes_from_cache(b) -> None:
    from flows.pipeline import pipeline

    root = b
    head_model = root / "models" / "head.keras"
    before = head_model.stat().st_mtime_ns
    report = root / "reports" / "validate" / "result.json"
    committed_report = report.read_bytes()
    # Every image now counts as blank: validation rejects the data.
    failed = pipeline(project_dir=str(root), overrides=["validate.pixel_std_min=250"], return_state=True)
    assert failed.is_failed()
    assert "expectations failed" in failed.message and "pixel_std" in failed.message
    logs = log_text(failed.state_details.flow_run_id, expect=("error: data/prepared:", "pixel_std"))
    assert "error: data/prepared:" in logs and "pixel_std" in logs  # the stage's own error, in the Prefect logs
    done = outcomes(failed.state_details.flow_run_id)
    assert done["ingest"] == "skipped" and done["validate"] == "failed"
    assert {done[s] for s in ("train", "finetune", "evaluate", "export", "benchmark", "model_card")} == {"not run"}
    assert head_model.stat().st_mtime_ns == before
    # The failed run rewrote validate's report (a failing one): the params are switched back below
    # to the committed ones, which DVC's run cache holds the outputs of.
    assert report.read_bytes() != committed_report
    assert yaml.safe_load(run(root, "git", "show", "HEAD:params.yaml"))["validate"]["pixel_std_min"] == 2.0

    fixed = pipeline(project_dir=str(root), overrides=["validate.pixel_std_min=2.0"], return_state=True)
    assert fixed.is_completed(), fixed.message
    done = outcomes(fixed.state_details.flow_run_id)
    # validate comes back from DVC's run cache, byte for byte, without running; nothing else moves.
    assert done["validate"] == "restored"
    assert report.read_bytes() == committed_report
    assert {v for s, v in done.items() if s != "validate"} == {"skipped"}
    assert head_model.stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"stages": ["trian"]}, "unknown stage 'trian': dvc.yaml defines ingest, validate, train"),
        ({"overrides": ["train.epochs"]}, "override 'train.epochs' is malformed"),
        ({"overrides": ["train.epoch=3"]}, "override 'train.epoch=3': Could not override 'train.epoch'"),
        ({"overrides": ["train.epochs=0"]}, "train.epochs: Input should be greater than 0 (got 0)"),
        ({"overrides": ["backbone=resnet9000"]}, "backbone='resnet9000' is not a known backbone"),
    ],
)
def test_bad_pipeline_input_fails_naming_the_value(b, kwargs, message) -> None:
    from flows.pipeline import pipeline

    root = b
    params = (root / "params.yaml").read_text()
    state = pipeline(project_dir=str(root), return_state=True, **kwargs)
    assert state.is_failed() and message in state.message
    assert (root / "params.yaml").read_text() == params  # nothing half-applied


def test_pipeline_cli_forces_a_stage_and_applies_overrides(b, prefect_server) -> None:
    root = b
    cli = [sys.executable, "-m", "flows.pipeline", "--stages", "validate", "-f", "-S", "validate.pixel_std_min=1.5"]
    proc = subprocess.run(cli, cwd=root, env=env(prefect_server), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert yaml.safe_load((root / "params.yaml").read_text())["validate"]["pixel_std_min"] == 1.5
    # -f reran the selected stage and its upstream, as `dvc repro -f validate` does; nothing else.
    assert ran_stages(proc.stdout + proc.stderr) == ["ingest", "validate"]
    bad = subprocess.run(
        [*cli[:-1], "evaluate.top_confusions=0"],
        cwd=root,
        env=env(prefect_server),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert bad.returncode == 1 and "evaluate.top_confusions: Input should be greater than 0" in bad.stdout + bad.stderr
    for command in ("git checkout -- params.yaml dvc.lock reports", "dvc checkout"):  # the README's recipe puts it back
        run(root, *command.split())
    assert ran_stages(run(root, "dvc", "repro")) == []
