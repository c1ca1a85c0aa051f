"""The classifier every training stage builds: raw pixels in, class probabilities out.

    image (uint8-valued float32 RGB, the dataset's native H×W)
      → Resizing to the backbone's input size (interpolation from params)
      → the backbone's preprocess_input, rebuilt from built-in layers
      → backbone (called with training=False; its BatchNorm layers frozen)
      → global pooling                                  ← features (cached by the train stage)
      → "head": dropout → [dense → dropout]* → dense softmax (float32)

Only built-in Keras layers (Resizing, Rescaling, a frozen 1×1 Conv2D for the caffe-style BGR
flip) so `keras.models.load_model` needs no custom objects and tf2onnx sees plain ops: the
preprocessing constants are layer weights or literals, never captured tensors that tf2onnx would
turn into extra graph inputs.

Keras 3 note: a functional model called with training=True (as fit does) passes training=True
to every nested layer, overriding the training=False recorded when the backbone was called
(keras-team/keras#20285). BatchNorm therefore stays in inference mode because its layers are
frozen (trainable=False, which Keras 3 BatchNormalization honours), not because of that flag.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tlpipe.model.backbones import (
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    Backbone,
    get_backbone,
    resolve_image_size,
)
from tlpipe.model.unfreeze import freeze_batchnorm
from tlpipe.model.weights import resolve_weights, weights_file_name
from tlpipe.paths import Paths
from tlpipe.util.errors import first_line

if TYPE_CHECKING:
    from tlpipe.config.params import Params

BACKBONE_LAYER = "backbone"
HEAD_LAYER = "head"
POOL_LAYER = "pool"


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Everything the params decide about the network, resolved and checked."""

    backbone: Backbone
    image_size: int  # backbone input side
    input_shape: tuple[int, int, int]  # dataset's native H×W×3
    num_classes: int
    weights: str | None  # "imagenet", an absolute file path, or None
    weights_id: str  # what the weights are, for cache keys: imagenet@keras-x, sha256 of a file, none@seed
    alpha: float | None
    interpolation: str
    pooling: str
    dropout: float
    head_units: tuple[int, ...]
    # Seeds the head's initializers and dropout explicitly. Keras's default seeds come from
    # Python's global `random`, which other threads in the process (Prefect's services) also
    # draw from: with implicit seeds, the same params gave different heads now and then.
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        """What the reports say about the model: no machine paths (file names only)."""
        return {
            "backbone": self.backbone.name,
            "image_size": self.image_size,
            "input_shape": list(self.input_shape),
            "alpha": self.alpha,
            "weights": weights_file_name(self.weights),
            "interpolation": self.interpolation,
            "pooling": self.pooling,
        }


def resolve_spec(params: Params, input_shape: tuple[int, int, int], num_classes: int, paths: Paths) -> ModelSpec:
    """Check the model params against the registry and the disk; raise ValueError naming the key."""
    backbone = get_backbone(params.backbone)
    m = params.model
    alpha = backbone.resolve_alpha(m.alpha)
    weights, weights_id = resolve_weights(
        backbone, weights=m.weights, weights_dir=m.weights_dir, alpha=alpha, seed=params.seed, paths=paths
    )
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"expected RGB images H×W×3, got image shape {input_shape}")
    return ModelSpec(
        backbone=backbone,
        image_size=resolve_image_size(backbone, m.image_size, m.image_scale),
        input_shape=tuple(input_shape),
        num_classes=num_classes,
        weights=weights,
        weights_id=weights_id,
        alpha=alpha,
        interpolation=m.interpolation,
        pooling=m.pooling,
        dropout=m.dropout,
        head_units=tuple(m.head_units),
        seed=params.seed,
    )


def build_backbone(spec: ModelSpec) -> Any:
    """The headless Keras application with its weights; a mismatching weights file is a ValueError."""
    try:
        model = spec.backbone.build(spec.image_size, spec.weights, spec.alpha)
    except ValueError as err:
        if spec.weights not in (None, "imagenet"):
            raise ValueError(
                f"model.weights={spec.weights!r} does not match backbone {spec.backbone.name!r}"
                f"{f' with alpha {spec.alpha}' if spec.alpha else ''} (include_top=False): {first_line(err)}"
            ) from None
        raise
    except OSError as err:
        raise ValueError(
            f"model.weights={spec.weights!r} is not a readable Keras weights file: {first_line(err)}"
        ) from None
    except Exception as err:  # the ImageNet download: URL errors, HTTP errors, hash mismatch
        if spec.weights == "imagenet":
            raise ValueError(
                f"model.weights=imagenet: could not get the ImageNet weights of {spec.backbone.name!r} "
                f"({first_line(err)}); without internet set model.weights_dir to a mirror holding "
                f"{spec.backbone.weights_filename(spec.alpha)}, or model.weights to a file"
            ) from None
        raise
    model.name = BACKBONE_LAYER  # a fixed name, so later stages find it in any backbone's model
    return model


def preprocessing_layers(backbone: Backbone) -> list[Any]:
    """The backbone's preprocess_input as built-in layers (input: float 0..255 RGB)."""
    import keras

    kind = backbone.preprocessing
    if kind == "tf":
        return [keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")]
    if kind == "torch":
        # (x/255 - mean)/std == x * 1/(255 std) - mean/std, one multiply-add per channel.
        scale = [1.0 / (255.0 * s) for s in IMAGENET_STD_RGB]
        offset = [-m / s for m, s in zip(IMAGENET_MEAN_RGB, IMAGENET_STD_RGB, strict=True)]
        return [keras.layers.Rescaling(scale, offset=offset, name="preprocess")]
    if kind == "caffe":
        # RGB→BGR and the per-channel mean as one frozen 1×1 convolution: a permutation kernel
        # and the negative BGR mean as bias. x·1 + 0 + 0 - mean is exact in float32.
        kernel = np.zeros((1, 1, 3, 3), np.float32)
        for out_c in range(3):
            kernel[0, 0, 2 - out_c, out_c] = 1.0
        bias = -np.asarray(CAFFE_MEAN_BGR, np.float32)
        conv = keras.layers.Conv2D(
            3,
            1,
            use_bias=True,
            name="preprocess",
            trainable=False,
            kernel_initializer=keras.initializers.Constant(kernel),
            bias_initializer=keras.initializers.Constant(bias),
        )
        return [conv]
    raise ValueError(f"unknown preprocessing kind {kind!r}")


def build_head(spec: ModelSpec, num_features: int) -> Any:
    import keras

    seeds = iter(range(spec.seed * 1000, spec.seed * 1000 + 1000))  # one explicit seed per random layer
    inputs = keras.Input((num_features,), name="features")
    x = keras.layers.Dropout(spec.dropout, seed=next(seeds), name="head_dropout")(inputs)
    for i, units in enumerate(spec.head_units):
        init = keras.initializers.GlorotUniform(seed=next(seeds))
        x = keras.layers.Dense(units, activation="relu", kernel_initializer=init, name=f"head_dense_{i}")(x)
        x = keras.layers.Dropout(spec.dropout, seed=next(seeds), name=f"head_dropout_{i}")(x)
    # float32 softmax whatever the policy: probabilities and the loss stay accurate under mixed precision.
    init = keras.initializers.GlorotUniform(seed=next(seeds))
    outputs = keras.layers.Dense(
        spec.num_classes, activation="softmax", dtype="float32", kernel_initializer=init, name="probabilities"
    )(x)
    return keras.Model(inputs, outputs, name=HEAD_LAYER)


@dataclass
class Classifier:
    """The full model and the views of it the stages train: all share the same layers."""

    model: Any  # image → probabilities (what is saved)
    extractor: Any  # image → pooled features (fills the feature cache)
    head: Any  # pooled features → probabilities (trained on the cache)
    backbone: Any

    @property
    def num_features(self) -> int:
        return int(self.head.inputs[0].shape[-1])


def build_classifier(spec: ModelSpec) -> Classifier:
    """Build the classifier with a frozen backbone (the head phase's starting point)."""
    import keras

    inputs = keras.Input(spec.input_shape, name="image", dtype="float32")
    x = inputs
    if spec.input_shape[:2] != (spec.image_size, spec.image_size):
        x = keras.layers.Resizing(spec.image_size, spec.image_size, interpolation=spec.interpolation, name="resize")(x)
    for layer in preprocessing_layers(spec.backbone):
        x = layer(x)
    backbone = build_backbone(spec)
    backbone.trainable = False
    freeze_batchnorm(backbone)
    x = backbone(x, training=False)
    pool = keras.layers.GlobalAveragePooling2D if spec.pooling == "avg" else keras.layers.GlobalMaxPooling2D
    features = pool(name=POOL_LAYER)(x)
    head = build_head(spec, int(features.shape[-1]))
    outputs = head(features)
    model = keras.Model(inputs, outputs, name=f"{spec.backbone.name}_classifier")
    extractor = keras.Model(inputs, features, name=f"{spec.backbone.name}_features")
    return Classifier(model, extractor, head, backbone)


def rebuild_float32(spec: ModelSpec, trained: Any) -> Any:
    """A float32 copy of `trained` (built under a mixed policy) for saving and export."""
    import keras

    from tlpipe.runtime import float32_policy

    if keras.mixed_precision.global_policy().name == "float32":
        return trained
    with float32_policy():
        # Weights "none": no download or file read for a model whose weights are overwritten anyway.
        clean = build_classifier(with_weights(spec, None)).model
    clean.set_weights(trained.get_weights())
    return clean


def with_weights(spec: ModelSpec, weights: str | None) -> ModelSpec:
    return replace(spec, weights=weights)


def summary_text(model: Any) -> str:
    lines: list[str] = []
    model.summary(print_fn=lambda s, **_: lines.append(s), expand_nested=False, show_trainable=True)
    return "\n".join(lines) + "\n"
