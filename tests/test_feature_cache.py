"""The feature cache is reused only when everything the features depend on is unchanged: the
backbone, its weights, the image size and the data; any one of them changed is a miss."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import MOBILENET_V2_035, write_prepared
from tests.test_train import tiny_params
from tlpipe.paths import Paths


def train_hit(root: Path, backbone: str = "mobilenetv2", **model) -> bool:
    """Train one epoch (random mobilenetv2 weights at 32 px unless `backbone`/`model` say
    otherwise); whether both splits' features came from the cache."""
    from stages import train

    model = {"weights": "none", "alpha": 0.35, "image_size": 32, **model}
    train.run(tiny_params(backbone=backbone, model=model, train={"epochs": 1}), Paths(root))
    return json.loads((Paths(root).reports("train") / "timings.json").read_text())["features"]["cache_hit"] == 1


@pytest.mark.skipif(not MOBILENET_V2_035.is_file(), reason=f"the shared ImageNet weights are not at {MOBILENET_V2_035}")
def test_the_feature_cache_hits_only_when_backbone_weights_size_and_data_are_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "project"
    write_prepared(root / "data" / "prepared", ["cat", "dog", "frog"], {"train": 6, "val": 2, "test": 2})
    assert not train_hit(root)  # an empty cache
    assert train_hit(root)  # nothing changed
    assert not train_hit(root, image_size=48)
    assert not train_hit(root, weights=str(MOBILENET_V2_035))  # ImageNet weights instead of random ones
    assert not train_hit(root, backbone="mobilenet", alpha=0.25)
    # Other images, same shape and count: another fingerprint.
    shutil.rmtree(root / "data" / "prepared")
    write_prepared(root / "data" / "prepared", ["cat", "dog", "frog"], {"train": 6, "val": 2, "test": 2}, seed=7)
    assert not train_hit(root)
    assert train_hit(root)
    assert len(list(Paths(root).features.glob("*/*/index.json"))) == 2 * 5  # train and val of each miss
