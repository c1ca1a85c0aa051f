"""The flows' own decisions, without a Prefect server: DAG order from DVC, which stages an override
touches, DVC's report lines, overrides, retries, the leaderboard's reading of `dvc exp show`."""

from __future__ import annotations

import shutil

import pytest
import yaml

from flows import dvc_runner
from flows.compare_plan import Entry, escaping_path_overrides, set_params
from flows.leaderboard import leaderboard_row
from flows.overrides import OverrideError, apply_overrides, override_keys
from flows.pipeline import headline, retries_for
from tests.conftest import REPO


@pytest.fixture(scope="module")
def pipe() -> dvc_runner.Pipeline:
    return dvc_runner.read_pipeline(REPO)


def test_stages_come_from_dvc_yaml_in_dag_order(pipe) -> None:
    declared = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    assert sorted(pipe.order) == sorted(declared)
    for stage, upstream in pipe.upstream.items():
        assert all(pipe.order.index(u) < pipe.order.index(stage) for u in upstream)
    assert pipe.order[:2] == ("ingest", "validate")
    assert pipe.select(["validate"]) == ("ingest", "validate")
    assert pipe.metrics["evaluate"] == ("reports/evaluate/metrics.json",)
    with pytest.raises(dvc_runner.UnknownStageError, match="unknown stage 'evalute': dvc.yaml defines ingest, "):
        pipe.select(["evalute"])


def test_a_backbone_override_leaves_the_data_stages_shared(pipe) -> None:
    affected = pipe.affected_by(override_keys(["backbone=mobilenet", "model.alpha=0.5"]))
    assert "ingest" not in affected and "validate" not in affected
    assert {"train", "finetune", "evaluate", "export", "benchmark"} <= set(affected)
    assert pipe.affected_by(override_keys(["data.limit.train=10"]))[:2] == ("ingest", "validate")


def test_paths_dvc_tracks_become_absolute_and_the_others_resolve_from_the_origin(tmp_path) -> None:
    from tlpipe.paths import Paths

    root = tmp_path / "repo"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / "params.yaml").write_text(
        yaml.safe_dump(
            {"data": {"path": "../images.tar.gz"}, "model": {"weights_dir": "../weights", "weights": "none"}}
        )
    )
    # data.path is a DVC dependency (${data.path}): in a copy of the project DVC needs it absolute.
    assert escaping_path_overrides(root) == [f"data.path={tmp_path / 'images.tar.gz'}"]
    # model.weights_dir is read by the stages, which resolve it from the project a copy came from.
    copy = root / ".dvc" / "tmp" / "exps" / "tmpabc123"
    assert Paths(copy).resolve("../weights") == tmp_path / "weights" == Paths(root).resolve("../weights")
    assert Paths(tmp_path / "elsewhere").resolve("../weights") == tmp_path / "weights"
    # A user's own value for such a key wins over the fix.
    entry = Entry("mobilenet", "m", ("backbone=mobilenet", "data.path=/mirror/x.tgz"))
    fix = [f"data.path={tmp_path / 'images.tar.gz'}", "model.weights_dir=/w"]
    assert set_params(entry, fix) == [
        "-S",
        "backbone=mobilenet",
        "-S",
        "data.path=/mirror/x.tgz",
        "-S",
        "model.weights_dir=/w",
    ]


def test_dvc_report_lines_say_what_happened_to_a_stage() -> None:
    assert dvc_runner.stage_outcome("train", ["Running stage 'train':", "> python -m stages.train"]) == "ran"
    assert dvc_runner.stage_outcome("train", ["Stage 'train' didn't change, skipping"]) == "skipped"
    assert (
        dvc_runner.stage_outcome("train", ["Stage 'train' is cached - skipping run, checking out outputs"])
        == "restored"
    )
    assert dvc_runner.stage_outcome("train", ["Stage 'training' didn't change, skipping"]) is None
    out = ["noise"] * 300 + ["error: data.path: x does not exist", "  - detail", "ERROR: failed to reproduce 'ingest'"]
    assert dvc_runner.failure_reason(out).splitlines() == out[-3:]


def test_overrides_are_checked_before_params_yaml_changes(tmp_path) -> None:
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    before = (tmp_path / "params.yaml").read_text()
    for bad, message in [
        ("train.epochs", "override 'train.epochs' is malformed"),
        ("train.epochs=1,2", "override 'train.epochs=1,2' is a sweep"),
        ("train.epochs=-1", "train.epochs: Input should be greater than 0"),
        ("backbone=alexnet", "backbone='alexnet' is not a known backbone"),
        ("other.yaml:seed=1", "params file"),
    ]:
        with pytest.raises(OverrideError, match=message.replace("(", r"\(").replace(")", r"\)")):
            apply_overrides(tmp_path, ["seed=3", bad])
        assert (tmp_path / "params.yaml").read_text() == before
    apply_overrides(tmp_path, ["train.epochs=3", "backbone=mobilenet"])
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    assert params["train"]["epochs"] == 3 and params["backbone"] == "mobilenet"
    assert "# Every hyperparameter" in (tmp_path / "params.yaml").read_text()  # comments kept, as `dvc exp run -S` does


def test_only_a_download_is_retried() -> None:
    assert retries_for("ingest", {"data": {"source": "keras"}}) == 3
    assert retries_for("ingest", {"data": {"source": "folder"}}) == 0
    assert retries_for("train", {"data": {"source": "keras"}}) == 0


def test_benchmark_headline_keeps_the_headline_batch() -> None:
    # The benchmark stage's metrics.json layout.
    metrics = {
        "headline_batch": 32,
        "throughput_median": {"onnx-fp32": {"b1": 10.0, "b32": 300.0}, "keras": {"b1": 5.0, "b32": 100.0}},
        "speedup": {"onnx-fp32_vs_keras": 3.0},
    }
    assert headline("benchmark", metrics) == {
        "headline_batch": 32,
        "throughput_median.onnx-fp32": 300.0,
        "throughput_median.keras": 100.0,
        "speedup": {"onnx-fp32_vs_keras": 3.0},
    }


def test_leaderboard_row_reads_an_experiment_of_dvc_exp_show() -> None:
    exp = {
        "state": "success",
        "data": {
            "metrics": {
                "reports/evaluate/metrics.json": {"data": {"accuracy": 0.91}},
                "reports/benchmark/metrics.json": {
                    "data": {"headline_batch": 32, "throughput_median": {"onnx-fp32": {"b32": 812.5}}}
                },
                "reports/train/timings.json": {"data": {"total_seconds": 100.0}},
                "reports/finetune/timings.json": {"data": {"total_seconds": 250.5}},
            },
            "outs": {"models/model.onnx": {"size": 9 * 2**20}},
        },
    }
    entry = Entry("mobilenet", "mobilenet-20260101-000000", ("backbone=mobilenet", "train.epochs=5"))
    row = leaderboard_row(entry, exp, run_s=400.0)
    assert row == {
        "backbone": "mobilenet",
        "experiment": "mobilenet-20260101-000000",
        "status": "success",
        "accuracy": 0.91,
        "model_mb": 9.0,
        "throughput_img_s": 812.5,
        "throughput_batch": 32,
        "train_s": 350.5,
        "run_s": 400.0,
        "overrides": "train.epochs=5",
        "error": None,
    }
    assert leaderboard_row(entry, None, error="error: out of memory\ntraceback")["status"] == "failed"


def test_queue_status_is_read_per_experiment_with_the_active_workers() -> None:
    from flows.dvc_queue import parse_status

    output = """Task     Name                       Created    Status
4a5b5d5  mobilenetv2-20261203-1657  04:57 PM   Success
9c0de12  mobilenet-20261203-1657    04:57 PM   Failed
1f2e3d4  vgg16-20261203-1657        04:58 PM   Running
77aa8bc  resnet50-20261203-1657     04:58 PM   Queued

Worker status: 1 active, 0 idle
"""
    states, active = parse_status(output)
    assert states == {
        "mobilenetv2-20261203-1657": "success",
        "mobilenet-20261203-1657": "failed",
        "vgg16-20261203-1657": "running",
        "resnet50-20261203-1657": "queued",
    }
    assert active == 1
    assert parse_status("No experiment tasks in the queue.\n") == ({}, 0)
