"""The backbone registry: every ImageNet model the pipeline can train on, and what differs between them.

Each entry knows its Keras constructor, its own `preprocess_input` (and the formula it applies,
which `tlpipe.model.classifier` rebuilds from built-in layers so the saved model needs no custom objects),
its default and minimum input sizes, how its layers group into blocks for unfreezing, and the
file name of its ImageNet no-top weights in a local mirror (`model.weights_dir`).

`params.backbone` is the registry key, so `dvc exp run -S backbone=inceptionv3` switches all of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

# The three formulas Keras's preprocess_input functions apply to 0..255 RGB input:
#   tf:    x / 127.5 - 1
#   caffe: RGB -> BGR, then subtract the ImageNet mean per channel (no scaling)
#   torch: (x / 255 - mean) / std per channel (EfficientNetV2 and ConvNeXt do this inside the
#          Keras model with include_preprocessing=True; we build them without it and apply the
#          same formula ourselves, so every backbone's preprocessing is made of the same layers)
Preprocessing = Literal["tf", "caffe", "torch"]

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class BlockRule:
    """Layer name pattern → block name. A layer no rule matches joins the block before it."""

    pattern: str
    block: str  # a template filled from the match's groups, e.g. "block_{0}"
    # True: this layer closes its block (InceptionV3's `mixedN` concatenations end block mixedN).
    closes: bool = False


@dataclass(frozen=True, kw_only=True)
class Backbone:
    name: str
    constructor: str  # attribute of keras.applications
    module: str  # keras.applications submodule holding its preprocess_input
    preprocessing: Preprocessing
    default_size: int
    min_size: int
    block_rules: tuple[BlockRule, ...]
    # Mirror file name of the ImageNet no-top weights ({alpha} filled for width-multiplied models).
    weights_file: str
    has_alpha: bool = False
    # Extra constructor arguments (preprocessing is always ours, never the model's own).
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def preprocess_input(self) -> Callable[..., Any]:
        """The backbone's own Keras preprocess_input (the reference our layers are tested against)."""
        import keras

        return getattr(keras.applications, self.module).preprocess_input

    def weights_filename(self, alpha: float | None) -> str:
        return self.weights_file.format(alpha=self.resolve_alpha(alpha))

    def resolve_alpha(self, alpha: float | None) -> float | None:
        if not self.has_alpha:
            if alpha is not None:
                raise ValueError(f"model.alpha={alpha} given, but backbone {self.name!r} has no width multiplier")
            return None
        return 1.0 if alpha is None else float(alpha)

    def build(self, size: int, weights: str | None, alpha: float | None = None) -> Any:
        """The headless Keras model at size×size×3; weights: 'imagenet', a file path, or None."""
        import keras

        kwargs = dict(self.kwargs)
        if self.has_alpha:
            kwargs["alpha"] = self.resolve_alpha(alpha)
        ctor = getattr(keras.applications, self.constructor)
        return ctor(include_top=False, weights=weights, input_shape=(size, size, 3), pooling=None, **kwargs)

    def blocks(self, layers: list[Any]) -> list[tuple[str, list[Any]]]:
        """Group a model's layers (input layer excluded) into ordered (block name, layers) pairs."""
        layers = [layer for layer in layers if type(layer).__name__ != "InputLayer"]
        matched = [self._rule_for(layer.name) for layer in layers]
        names: list[str] = []
        if any(rule.closes for rule in self.block_rules):
            # Blocks end at a closing layer: each layer belongs to the next closing layer's block
            # (so InceptionV3's stem joins mixed0); layers after the last one form "top".
            upcoming = "top"
            for name, closes in reversed(matched):
                if closes:
                    upcoming = name
                names.append(upcoming)
            names.reverse()
        else:
            # Blocks start at a named layer: unnamed layers (pads, pools) join the block before them.
            current = "stem"
            for name, _ in matched:
                current = name or current
                names.append(current)
        groups: list[tuple[str, list[Any]]] = []
        for name, layer in zip(names, layers, strict=False):
            if not groups or groups[-1][0] != name:
                groups.append((name, []))
            groups[-1][1].append(layer)
        return groups

    def _rule_for(self, layer_name: str) -> tuple[str | None, bool]:
        for rule in self.block_rules:
            m = re.search(rule.pattern, layer_name)
            if m:
                return rule.block.format(*m.groups()), rule.closes
        return None, False


REGISTRY: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone(
            name="vgg16",
            constructor="VGG16",
            module="vgg16",
            preprocessing="caffe",
            default_size=224,
            min_size=32,
            block_rules=(BlockRule(r"^(block\d+)_", "{0}"),),
            weights_file="vgg16_no_top.weights.h5",
        ),
        Backbone(
            name="vgg19",
            constructor="VGG19",
            module="vgg19",
            preprocessing="caffe",
            default_size=224,
            min_size=32,
            block_rules=(BlockRule(r"^(block\d+)_", "{0}"),),
            weights_file="vgg19_no_top.weights.h5",
        ),
        Backbone(
            name="resnet50",
            constructor="ResNet50",
            module="resnet",
            preprocessing="caffe",
            default_size=224,
            min_size=32,
            block_rules=(BlockRule(r"^(conv1)_", "{0}"), BlockRule(r"^(conv\d_block\d+)_", "{0}")),
            weights_file="resnet50_no_top.weights.h5",
        ),
        Backbone(
            name="inceptionv3",
            constructor="InceptionV3",
            module="inception_v3",
            preprocessing="tf",
            default_size=299,
            min_size=75,
            block_rules=(BlockRule(r"^(mixed\d+)$", "{0}", closes=True),),
            weights_file="inception_v3_no_top.weights.h5",
        ),
        Backbone(
            name="mobilenet",
            constructor="MobileNet",
            module="mobilenet",
            preprocessing="tf",
            default_size=224,
            min_size=32,
            block_rules=(BlockRule(r"^conv1", "stem"), BlockRule(r"^conv_(?:dw|pw|pad)_(\d+)", "block_{0}")),
            weights_file="mobilenet_{alpha}_224_no_top.weights.h5",
            has_alpha=True,
        ),
        Backbone(
            name="mobilenetv2",
            constructor="MobileNetV2",
            module="mobilenet_v2",
            preprocessing="tf",
            default_size=224,
            min_size=32,
            block_rules=(
                BlockRule(r"^(?:Conv1|bn_Conv1)", "stem"),
                BlockRule(r"^expanded_conv_", "block_0"),
                BlockRule(r"^(block_\d+)_", "{0}"),
                BlockRule(r"^(?:Conv_1|out_relu)", "top"),
            ),
            weights_file="mobilenet_v2_{alpha}_224_no_top.weights.h5",
            has_alpha=True,
        ),
        Backbone(
            name="efficientnetv2b0",
            constructor="EfficientNetV2B0",
            module="efficientnet_v2",
            preprocessing="torch",
            default_size=224,
            min_size=32,
            block_rules=(
                BlockRule(r"^stem_", "stem"),
                BlockRule(r"^(block\d+[a-z])_", "{0}"),
                BlockRule(r"^top_", "top"),
            ),
            weights_file="efficientnetv2-b0_no_top.weights.h5",
            kwargs={"include_preprocessing": False},
        ),
        Backbone(
            name="convnext_tiny",
            constructor="ConvNeXtTiny",
            module="convnext",
            preprocessing="torch",
            default_size=224,
            min_size=32,
            block_rules=(
                BlockRule(r"_stem$", "stem"),
                BlockRule(r"_(stage_\d+_block_\d+)_", "{0}"),
                BlockRule(r"_downsampling_block_(\d+)$", "downsampling_{0}"),
                BlockRule(r"^layer_normalization", "top"),
            ),
            weights_file="convnext_tiny_no_top.weights.h5",
            kwargs={"include_preprocessing": False},
        ),
    )
}


def get_backbone(name: str) -> Backbone:
    """The registry entry for `name`; an unknown name is an error listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"backbone={name!r} is not a known backbone; expected one of: {', '.join(REGISTRY)}") from None


def resolve_image_size(backbone: Backbone, image_size: int | None, image_scale: float) -> int:
    """The backbone's input side: model.image_size if set, else its default size × model.image_scale.

    A scaled size is rounded to a multiple of 8, so `-S backbone=…` keeps a CPU preset's
    fraction of each backbone's own size (96 px for 224-px models, 128 px for InceptionV3 at 0.43).
    """
    if image_size is not None:
        size, key = image_size, f"model.image_size={image_size}"
    else:
        size = backbone.default_size
        if image_scale != 1.0:
            size = max(8, int(round(size * image_scale / 8.0)) * 8)
        key = f"model.image_scale={image_scale} (× default {backbone.default_size} = {size} px)"
    if size < backbone.min_size:
        raise ValueError(
            f"{key} is below the minimum input size of backbone {backbone.name!r}: "
            f"expected at least {backbone.min_size} px"
        )
    return size
