"""The train stage through the real code: tiny images, MobileNetV2 α=0.35, a few epochs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from tests.conftest import MOBILENET_V2_035, REPO
from tlpipe.config.params import Params, with_overrides
from tlpipe.data.dataset import load_split
from tlpipe.paths import Paths

WEIGHTS = str(MOBILENET_V2_035) if MOBILENET_V2_035.is_file() else "none"


def tiny_params(**overrides: Any) -> Params:
    """The default params shrunk to seconds: 32 px, MobileNetV2 α=0.35, batches of 8."""
    base = with_overrides(
        Params(),
        backbone="mobilenetv2",
        model={"image_size": 32, "alpha": 0.35, "weights": WEIGHTS},
        train={"epochs": 2, "batch_size": 8, "feature_batch_size": 32, "early_stopping": {"monitor": "val_loss"}},
        finetune={"epochs": 2, "batch_size": 8, "backup_every_steps": 2, "unfreeze": {"top_blocks": 2}},
        runtime={"log_every_seconds": 0.001},
    )
    return with_overrides(base, **overrides) if overrides else base


def timings(reports: Path) -> dict:
    return json.loads((reports / "timings.json").read_text())


def weights_of(path: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(path).get_weights()


def written(root: Path) -> list[str]:
    """Files the training stages may write (the prepared data excluded)."""
    return sorted(
        str(p.relative_to(root))
        for base in ("models", "reports", "data/features", "data/checkpoints")
        for p in (root / base).rglob("*")
        if p.is_file()
    )


def test_train_writes_the_head_model_reports_and_feature_cache(prepared_dir: Path, tmp_path: Path) -> None:
    import shutil

    import keras

    other = tmp_path / "through"
    shutil.copytree(prepared_dir / "data" / "prepared", other / "data" / "prepared")
    paths = Paths(prepared_dir)
    metrics = train_run(tiny_params(), paths)

    model = keras.models.load_model(paths.head_model)
    pixels = load_split(paths.prepared, "test")[0]
    probs = model.predict(pixels, verbose=0)
    assert probs.shape == (len(pixels), 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert model.get_layer("backbone").trainable_weights == []  # saved with its backbone frozen

    reports = paths.reports("train")
    assert json.loads((reports / "metrics.json").read_text()) == metrics
    # Chance is 1/3 on these 15 validation images; the head learnt the classes.
    assert metrics["epochs_run"] == 2 and metrics["best"]["val_accuracy"] > 0.5
    assert metrics["features"]["cached"] == 1 and timings(reports)["features"]["cache_hit"] == 0
    for curve in ("train/loss", "train/accuracy", "val/loss", "val/accuracy"):
        rows = (reports / "plots" / "metrics" / f"{curve}.tsv").read_text().splitlines()
        assert len(rows) == 1 + 2, curve  # header + one row per epoch
    assert "backbone (Functional)" in (reports / "summary.txt").read_text()
    assert len(list(paths.features.glob("mobilenetv2-32px-*/*/index.json"))) == 2  # train and val

    # Same params again: the cache is hit and, ops being deterministic on CPU, the metrics match.
    again = train_run(tiny_params(), paths)
    assert timings(reports)["features"]["cache_hit"] == 1
    for key in ("best", "train", "val"):
        assert again[key] == metrics[key]

    # Through the frozen backbone instead of the cache: the same model.
    through = train_run(tiny_params(train={"cache_features": False}), Paths(other))
    assert through["features"]["cached"] == 0 and not (other / "data" / "features").exists()
    for a, b in zip(weights_of(paths.head_model), weights_of(Paths(other).head_model), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Every epoch, not only the best one kept: the same curves.
    for curve in ("train/loss", "val/loss"):
        cached, direct = (
            np.loadtxt(p.reports("train") / "plots" / "metrics" / f"{curve}.tsv", skiprows=1, usecols=-1)
            for p in (paths, Paths(other))
        )
        assert len(cached) == 2 and cached == pytest.approx(direct, rel=1e-5), curve


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"backbone": "resnet5"},
            r"backbone='resnet5' is not a known backbone; expected one of: vgg16, vgg19, resnet50",
        ),
        (
            {"backbone": "inceptionv3", "model": {"image_size": 64, "alpha": None}},
            r"model.image_size=64 is below the minimum input size of backbone 'inceptionv3': expected at least 75",
        ),
        ({"model": {"weights": "no/such/file.weights.h5"}}, r"model.weights='no/such/file.weights.h5': file not found"),
        (
            {"model": {"alpha": 1.0}},
            r"model.weights='.*' does not match backbone 'mobilenetv2' with alpha 1.0",
        ),
    ],
)
def test_bad_params_are_clear_errors_and_write_nothing(prepared_dir: Path, overrides: dict, message: str) -> None:
    if "alpha" in overrides.get("model", {}) and overrides["model"]["alpha"] == 1.0 and WEIGHTS == "none":
        pytest.skip("needs the shared α=0.35 weights")
    with pytest.raises(ValueError, match=message):
        train_run(tiny_params(**overrides), Paths(prepared_dir))
    assert written(prepared_dir) == []


def test_cli_reports_a_bad_backbone_in_one_line(prepared_dir: Path) -> None:
    params = tiny_params().model_dump(by_alias=True)
    params["backbone"] = "alexnet"
    (prepared_dir / "params.yaml").write_text(yaml.safe_dump(params))
    proc = run_cli("stages.train", prepared_dir)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: backbone='alexnet' is not a known backbone")
    assert "Traceback" not in proc.stderr


def run_cli(module: str, cwd: Path, prelude: str = "", timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m <module>` in `cwd` (its own params.yaml), optionally after `prelude` code."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = f"{prelude}\nfrom {module} import main\nmain()\n"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def train_run(params: Params, paths: Paths) -> dict:
    from stages import train

    return train.run(params, paths)
