"""Presets: each is valid over params.yaml, prints DVC overrides, and the seed configurations run
(at tiny size, weights none: the backbones' real code paths, minus the ImageNet download)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from stages import presets as presets_cli
from tests.conftest import REPO, write_prepared
from tests.test_train import tiny_params, train_run
from tlpipe.config import presets
from tlpipe.config.params import with_overrides
from tlpipe.model.backbones import get_backbone
from tlpipe.paths import Paths

SEEDS = ["vgg19_frozen", "inceptionv3_partial", "vgg16_rmsprop", "resnet50"]
SLOW = {"inceptionv3_partial", "resnet50"}


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


@pytest.mark.parametrize("name", ["gpu", "photos", *SEEDS])
def test_presets_are_valid_over_params_yaml(name: str) -> None:
    params = presets.apply(presets.load_preset(name), repo_params())
    get_backbone(params.backbone)
    lines = presets.overrides(presets.load_preset(name), repo_params())
    assert lines and all("=" in kv and " " not in kv for kv in lines)
    # Applying the printed overrides as DVC would (dotted keys over params.yaml) gives the same params.
    raw = repo_params()
    for kv in lines:
        key, value = kv.split("=", 1)
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    assert presets.parse_params(raw, "dvc -S") == params


def test_params_yaml_switches_backbone_with_one_override() -> None:
    """`dvc exp run -S backbone=X` alone gives valid params for every backbone (size follows)."""
    from tlpipe.model.backbones import REGISTRY, resolve_image_size

    for name in REGISTRY:
        params = presets.apply({"backbone": name}, repo_params())
        size = resolve_image_size(get_backbone(name), params.model.image_size, params.model.image_scale)
        assert size >= get_backbone(name).min_size
    assert resolve_image_size(get_backbone("inceptionv3"), None, repo_params()["model"]["image_scale"]) == 128


def test_cli_prints_overrides_and_rejects_unknown_presets(capsys) -> None:
    presets_cli.main(["vgg19_frozen", "--command"])
    words = shlex.split(capsys.readouterr().out)
    assert words[:5] == ["dvc", "exp", "run", "-n", "vgg19_frozen"]
    assert "backbone=vgg19" in words and "finetune.enabled=false" in words
    with pytest.raises(SystemExit):
        presets_cli.main(["nope"])
    assert "preset 'nope' not found" in capsys.readouterr().err


def test_photos_preset_trains_photos_at_the_backbones_own_size_and_composes_with_gpu(capsys) -> None:
    """photos: every photo stored at 224 × 224, the size MobileNetV2 takes (nothing resized twice);
    only resolution keys, so a machine's preset merges with it (later names win)."""
    from tlpipe.model.backbones import resolve_image_size

    params = presets.apply(presets.load_preset("photos"), repo_params())
    size = resolve_image_size(get_backbone(params.backbone), params.model.image_size, params.model.image_scale)
    assert params.data.source == "folder" and params.data.image_size == size == 224
    assert params.data.resize_mode == "center_crop"
    presets_cli.main(["photos"])
    assert capsys.readouterr().out.split() == ["-S", "data.image_size=224", "-S", "model.image_scale=1.0"]

    presets_cli.main(["gpu", "photos", "--command"])
    words = shlex.split(capsys.readouterr().out)
    assert words[:5] == ["dvc", "exp", "run", "-n", "gpu-photos"]
    assert {"backbone=convnext_tiny", "data.image_size=224", "runtime.xla=true"} <= set(words)
    assert len([w for w in words if w.startswith("model.image_scale=")]) == 1  # each key once
    merged = presets.apply(presets.deep_merge(presets.load_preset("gpu"), presets.load_preset("photos")), repo_params())
    size = resolve_image_size(get_backbone(merged.backbone), merged.model.image_size, merged.model.image_scale)
    assert merged.data.image_size == size == 224


# InceptionV3 and ResNet50 spend ~25 s each tracing their backward pass: slow-marked.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in SEEDS])
def test_seed_presets_run_at_tiny_size(name: str, tmp_path: Path) -> None:
    """train + finetune with the seed's own backbone, unfreezing, optimizer and schedule."""
    from stages import finetune

    write_prepared(tmp_path / "data" / "prepared", ["cat", "dog", "frog"], {"train": 6, "val": 2, "test": 2})
    preset = presets.load_preset(name)
    backbone = get_backbone(preset["backbone"])
    params = with_overrides(
        presets.apply(preset, tiny_params().model_dump(by_alias=True)),
        model={"weights": "none", "alpha": None, "image_size": backbone.min_size},
        train={"epochs": 1, "batch_size": 6},
        finetune={"epochs": 1, "batch_size": 6, "steps_per_epoch": 1},
    )
    paths = Paths(tmp_path)
    head = train_run(params, paths)
    tuned = finetune.run(params, paths)
    assert head["epochs_run"] == 1 and paths.model.is_file()
    if name == "vgg19_frozen":
        assert tuned["enabled"] == 0
    else:
        assert tuned["enabled"] == 1 and tuned["epochs_run"] == 1
    if name == "inceptionv3_partial":
        assert tuned["unfrozen"]["first_block"] == "mixed9" and tuned["unfrozen"]["blocks"] == 2
    if name == "vgg16_rmsprop":
        assert tuned["unfrozen"]["layers"] == 1 and tuned["unfrozen"]["trainable_backbone_params"] == 0
