"""The backbone registry: names, sizes, blocks, and preprocessing equal to each backbone's own."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import MOBILENET_V2_035
from tlpipe.model.backbones import REGISTRY, get_backbone, resolve_image_size

REQUIRED = {
    "vgg16",
    "vgg19",
    "resnet50",
    "inceptionv3",
    "mobilenetv2",
    "efficientnetv2b0",
    "convnext_tiny",
    "mobilenet",
}

# The blocks each backbone's layers group into (first, last, count), as unfreezing sees them.
EXPECTED_BLOCKS = {
    "vgg16": ("block1", "block5", 5),
    "vgg19": ("block1", "block5", 5),
    "resnet50": ("conv1", "conv5_block3", 17),
    "inceptionv3": ("mixed0", "mixed10", 11),
    "mobilenet": ("stem", "block_13", 14),
    "mobilenetv2": ("stem", "top", 19),
    "efficientnetv2b0": ("stem", "top", 2 + 1 + 2 + 2 + 3 + 5 + 8),
    "convnext_tiny": ("stem", "top", 1 + 18 + 3 + 1),
}


def test_registry_covers_the_required_backbones() -> None:
    assert REQUIRED <= set(REGISTRY)
    assert get_backbone("inceptionv3").min_size == 75 and get_backbone("inceptionv3").default_size == 299


def test_unknown_backbone_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"backbone='resnet5' is not a known backbone; expected one of: .*resnet50"):
        get_backbone("resnet5")


def test_image_size_follows_the_backbone_unless_pinned() -> None:
    inception, mobilenet = get_backbone("inceptionv3"), get_backbone("mobilenetv2")
    assert resolve_image_size(inception, None, 1.0) == 299
    assert resolve_image_size(mobilenet, None, 1.0) == 224
    # The CPU preset's scale keeps each backbone's proportion: 96 px and 128 px.
    assert resolve_image_size(mobilenet, None, 0.43) == 96
    assert resolve_image_size(inception, None, 0.43) == 128
    assert resolve_image_size(inception, 80, 0.43) == 80
    with pytest.raises(
        ValueError,
        match=r"model.image_size=64 is below the minimum input size of backbone 'inceptionv3': expected at least 75",
    ):
        resolve_image_size(inception, 64, 1.0)
    with pytest.raises(ValueError, match=r"model.image_scale=0.2 .* below the minimum .* 'inceptionv3'"):
        resolve_image_size(inception, None, 0.2)


def test_alpha_only_for_width_multiplied_backbones() -> None:
    assert get_backbone("mobilenetv2").resolve_alpha(None) == 1.0
    assert get_backbone("mobilenetv2").weights_filename(0.35) == "mobilenet_v2_0.35_224_no_top.weights.h5"
    with pytest.raises(ValueError, match="model.alpha=0.5 given, but backbone 'vgg16' has no width multiplier"):
        get_backbone("vgg16").resolve_alpha(0.5)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_blocks_and_preprocessing(name: str) -> None:
    """Every backbone builds at its minimum size, its layers group into the expected blocks, and
    our built-in-layer preprocessing equals the backbone's own preprocess_input."""
    import keras

    from tlpipe.model.classifier import preprocessing_layers

    entry = get_backbone(name)
    alpha = 0.35 if name == "mobilenetv2" else (0.25 if name == "mobilenet" else None)
    model = entry.build(entry.min_size, None, alpha)
    blocks = entry.blocks(model.layers)
    names = [b for b, _ in blocks]
    first, last, count = EXPECTED_BLOCKS[name]
    assert (names[0], names[-1], len(names)) == (first, last, count), names
    assert len(set(names)) == len(names), "a block must be contiguous"
    assert sum(len(ls) for _, ls in blocks) == len(model.layers) - 1  # every layer but the input, once

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 8, 8, 3)).astype("float32")
    ours = x
    for layer in preprocessing_layers(entry):
        ours = layer(ours)
    ours = np.asarray(ours)
    if entry.preprocessing == "torch":
        # EfficientNetV2 and ConvNeXt preprocess inside the Keras model (their preprocess_input is
        # the identity): the reference is the model's own preprocessing layers.
        ref_model = getattr(keras.applications, entry.constructor)(
            include_top=False, weights=None, input_shape=(32, 32, 3), include_preprocessing=True
        )
        norm = [layer for layer in ref_model.layers if type(layer).__name__ == "Normalization"][0]
        x32 = rng.integers(0, 256, (2, 32, 32, 3)).astype("float32")
        ref = np.asarray(keras.Model(ref_model.input, norm.output)(x32))
        ours = x32
        for layer in preprocessing_layers(entry):
            ours = layer(ours)
        np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-5, atol=1e-5)
    else:
        np.testing.assert_allclose(ours, entry.preprocess_input(x.copy()), rtol=1e-6, atol=1e-4)


@pytest.mark.skipif(not MOBILENET_V2_035.is_file(), reason="shared weights not available")
def test_weights_file_of_another_backbone_is_a_clear_error(tmp_path) -> None:
    from tlpipe.config.params import Params, with_overrides
    from tlpipe.model.classifier import build_backbone, resolve_spec
    from tlpipe.paths import Paths

    params = with_overrides(Params(), backbone="mobilenetv2", model={"alpha": 1.0, "weights": str(MOBILENET_V2_035)})
    spec = resolve_spec(params, (32, 32, 3), 3, Paths(tmp_path))
    with pytest.raises(
        ValueError,
        match=(
            r"model.weights='.*mobilenet_v2_0.35_224_no_top.weights.h5' "
            r"does not match backbone 'mobilenetv2' with alpha 1.0"
        ),
    ):
        build_backbone(spec)


@pytest.mark.skipif(not MOBILENET_V2_035.is_file(), reason=f"the shared ImageNet weights are not at {MOBILENET_V2_035}")
def test_weights_mirror_dir_is_used_for_imagenet(tmp_path) -> None:
    from tlpipe.config.params import Params, with_overrides
    from tlpipe.model.classifier import resolve_spec
    from tlpipe.paths import Paths

    params = with_overrides(
        Params(),
        backbone="mobilenetv2",
        model={"alpha": 0.35, "weights": "imagenet", "weights_dir": str(MOBILENET_V2_035.parent)},
    )
    spec = resolve_spec(params, (32, 32, 3), 3, Paths(tmp_path))
    assert spec.weights == str(MOBILENET_V2_035.resolve())
    assert spec.weights_id.startswith("sha256:")
    # A backbone with no file in the mirror falls back to the Keras download.
    other = resolve_spec(
        with_overrides(params, backbone="vgg16", model={"alpha": None}), (32, 32, 3), 3, Paths(tmp_path)
    )
    assert other.weights == "imagenet" and other.weights_id.startswith("imagenet@keras-")
    # A missing mirror is not an error (a machine without ../shared): the download is the fallback.
    missing = resolve_spec(with_overrides(params, model={"weights_dir": "nowhere"}), (32, 32, 3), 3, Paths(tmp_path))
    assert missing.weights == "imagenet"
