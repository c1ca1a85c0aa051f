"""The batch prediction flow against a real Prefect server: the summary as an artifact, an
unreadable image on its row (the run completes), and on_error=fail failing the run."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from flows.predict import predict_flow
from tests.inputs import bad_image
from tests.prefect_client import artifact, log_text
from tests.test_predict import images_dir
from tests.tiny_models import tiny_project


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tiny_project(tmp_path_factory)


def test_predict_flow_writes_a_submission_and_an_artifact_and_fails_only_when_asked(
    project: Path, tmp_path: Path, prefect_server
) -> None:
    src, _ = images_dir(tmp_path / "test", 7)
    (src / "img8.png").write_bytes(bad_image("truncated"))
    settings = {"format": "submission", "providers": ["CPUExecutionProvider"]}
    out = tmp_path / "sub.csv"
    state = predict_flow(str(src), str(out), str(project), settings=settings, return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert (summary["images"], summary["unreadable"]) == (8, 1)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["id"] for r in rows] == [f"img{i}" for i in range(1, 9)] and rows[-1]["label"] == ""

    text = artifact(state.state_details.flow_run_id, "predict-summary")
    assert "**8 images**" in text and "| `img8.png` | unreadable image" in text
    logs = log_text(state.state_details.flow_run_id, expect=("predict: 8 images (1 unreadable",))
    assert "unreadable: img8.png" in logs

    failed = predict_flow(
        str(src), str(tmp_path / "f.csv"), str(project), settings={**settings, "on_error": "fail"}, return_state=True
    )
    assert failed.is_failed() and "img8.png: unreadable image" in str(failed.message or "") + repr(failed)
    assert not (tmp_path / "f.csv").exists()
