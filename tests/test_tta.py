"""Flip test-time augmentation inside the shipped model: exact, exported, and priced."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stages import evaluate, export
from tests.tiny_models import tiny_params, tiny_project
from tlpipe.config.params import with_overrides
from tlpipe.data.dataset import load_info, load_split
from tlpipe.export.onnx_model import open_model
from tlpipe.model.keras_io import load_keras_model
from tlpipe.model.tta import with_tta
from tlpipe.paths import Paths


@pytest.fixture(scope="module")
def flipped(tmp_path_factory) -> Path:
    """A copy of the tiny exported project, exported and evaluated again with tta: flip."""
    source = tiny_project(tmp_path_factory)
    root = tmp_path_factory.mktemp("tta")
    shutil.copytree(source / "data" / "prepared", root / "data" / "prepared")
    (root / "models").mkdir()
    shutil.copy(source / "models" / "model.keras", root / "models" / "model.keras")
    params = with_overrides(tiny_params(), tta="flip", export={"variants": ["int8"]})
    export.run(params, Paths(root))
    evaluate.run(params, Paths(root))
    return root


def test_flip_tta_is_the_mean_over_the_image_and_its_mirror(flipped: Path) -> None:
    paths = Paths(flipped)
    single = load_keras_model(paths.model)
    x, _ = load_split(paths.prepared, "test")
    x = x.astype("float32")
    want = (single.predict(x, verbose=0) + single.predict(x[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(with_tta(single, "flip").predict(x, verbose=0), want, atol=1e-6)
    assert with_tta(single, "none") is single
    with pytest.raises(ValueError, match="tta='rotate': expected one of none, flip"):
        with_tta(single, "rotate")


def test_the_exported_model_holds_the_tta_and_says_so(flipped: Path) -> None:
    paths = Paths(flipped)
    info = load_info(paths.prepared)
    x, y = load_split(paths.prepared, "test")
    shipped = open_model(paths.onnx_model, info=info)
    single = open_model(paths.variants / "model.single.onnx", info=info)
    meta = shipped.session.get_modelmeta().custom_metadata_map
    assert meta["tta"] == "flip" and meta["backbone_input_size"] == "48x48"
    assert single.session.get_modelmeta().custom_metadata_map["tta"] == "none"
    mean = (single.predict(x, 8) + single.predict(np.ascontiguousarray(x[:, :, ::-1]), 8)) / 2
    np.testing.assert_allclose(shipped.predict(x, 8), mean, atol=1e-5)
    # The variants and the single-view model are scored against the shipped (TTA) model.
    metrics = json.loads((paths.reports("export") / "metrics.json").read_text())
    assert set(metrics["variants"]) == {"fp32", "int8", "single"} and metrics["inside"]["tta"] == "flip"
    assert metrics["variants"]["fp32"]["accuracy"] == pytest.approx(
        float((shipped.predict(x, 8).argmax(1) == y).mean())
    )
    # evaluate scored the same TTA model.
    evaluated = json.loads((paths.reports("evaluate") / "metrics.json").read_text())
    assert evaluated["accuracy"] == pytest.approx(metrics["variants"]["fp32"]["accuracy"])
