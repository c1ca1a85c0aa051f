"""The model contract: raw uint8-valued pixels in, probabilities out, built-in layers only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import MOBILENET_V2_035
from tlpipe.config.params import Params, with_overrides

WEIGHTS = str(MOBILENET_V2_035) if MOBILENET_V2_035.is_file() else "none"


def small_spec(tmp_path: Path, backbone: str = "mobilenetv2", size: int = 48, **model: object):
    from tlpipe.model.classifier import resolve_spec
    from tlpipe.paths import Paths

    alpha = {"alpha": 0.35} if backbone == "mobilenetv2" else {}
    weights = WEIGHTS if backbone == "mobilenetv2" else "none"
    params = with_overrides(
        Params(), backbone=backbone, model={"image_size": size, "weights": weights, **alpha, **model}
    )
    return resolve_spec(params, (32, 32, 3), 3, Paths(tmp_path))


def test_saved_model_takes_pixels_and_loads_without_custom_objects(tmp_path: Path) -> None:
    import keras

    from tlpipe.model.classifier import build_classifier

    clf = build_classifier(small_spec(tmp_path, interpolation="bicubic"))
    path = tmp_path / "model.keras"
    clf.model.save(path)
    loaded = keras.models.load_model(path)  # safe_mode on, no custom_objects
    assert tuple(loaded.inputs[0].shape) == (None, 32, 32, 3) and loaded.inputs[0].dtype == "float32"
    kinds = {type(layer).__module__.split(".")[0] for layer in loaded.layers}
    assert kinds == {"keras"}, kinds
    assert [type(layer).__name__ for layer in loaded.layers[:3]] == ["InputLayer", "Resizing", "Rescaling"]
    assert loaded.get_layer("resize").interpolation == "bicubic"

    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    probs = loaded.predict(pixels, verbose=0)  # uint8 arrays are accepted as they are
    assert probs.shape == (4, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, clf.model.predict(pixels.astype("float32"), verbose=0), atol=1e-6)


def test_backbone_runs_in_inference_mode_even_when_the_model_trains(tmp_path: Path) -> None:
    """Keras 3 passes training=True into nested models during fit; frozen BatchNorm ignores it."""
    from tlpipe.config.finetune import UnfreezeParams
    from tlpipe.model.classifier import build_classifier
    from tlpipe.model.unfreeze import unfreeze

    spec = small_spec(tmp_path, size=32)
    clf = build_classifier(spec)
    unfreeze(clf.backbone, spec.backbone, UnfreezeParams(from_layer=0))  # everything trainable but BN
    x = np.random.default_rng(1).integers(0, 256, (8, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(clf.extractor(x, training=True)), np.asarray(clf.extractor(x, training=False)), atol=1e-6
    )
    assert all(not layer.trainable for layer in clf.backbone.layers if type(layer).__name__ == "BatchNormalization")


def test_caffe_preprocessing_exports_to_onnx_with_a_single_input(tmp_path: Path) -> None:
    """VGG/ResNet preprocessing (BGR flip, mean subtraction) converts with tf2onnx as plain ops:
    one graph input, and onnxruntime agrees with Keras."""
    import keras
    import onnxruntime as ort
    import tf2onnx

    from tlpipe.model.backbones import get_backbone
    from tlpipe.model.classifier import preprocessing_layers

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.Resizing(40, 40, name="resize")(inputs)
    for layer in preprocessing_layers(get_backbone("resnet50")):
        x = layer(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    proto, _ = tf2onnx.convert.from_keras(model, opset=17)
    assert len(proto.graph.input) == 1, [i.name for i in proto.graph.input]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    pixels = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    got = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    np.testing.assert_allclose(got, model.predict(pixels, verbose=0), atol=1e-5)


def test_mixed_precision_models_are_saved_in_float32(tmp_path: Path) -> None:
    import keras

    from tlpipe.model.classifier import build_classifier, rebuild_float32
    from tlpipe.runtime import configure

    spec = small_spec(tmp_path, size=32)
    rt = configure(with_overrides(Params(), runtime={"mixed_precision": True}))
    try:
        trained = build_classifier(spec).model
        # bfloat16 on a CPU, float16 or bfloat16 on a GPU: whichever the runtime chose, really used.
        half = keras.mixed_precision.Policy(rt.policy).compute_dtype
        assert half in ("bfloat16", "float16") and trained.get_layer("backbone").compute_dtype == half
        clean = rebuild_float32(spec, trained)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert {v.dtype for v in clean.weights} == {"float32"}
    assert {layer.compute_dtype for layer in clean.layers} == {"float32"}
    pixels = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(clean.predict(pixels, verbose=0), trained.predict(pixels, verbose=0), atol=0.05)


@pytest.mark.parametrize("kind", ["none", "mirrored"])
def test_strategies_build_on_cpu(kind: str) -> None:
    from tlpipe.runtime import make_strategy

    assert make_strategy(kind).num_replicas_in_sync >= 1


def test_head_is_a_function_of_the_seed_alone(tmp_path: Path) -> None:
    """Other code in the process drawing from Python's global `random` (Prefect's services do,
    from their own threads) must not change the head a seed gives: CI once saw two identical
    train runs diverge. Two builds with different draws in between give the same head; another
    seed gives another head."""
    import random

    from tlpipe.model.classifier import build_head
    from tlpipe.runtime import seed_everything

    spec = small_spec(tmp_path, size=32, head_units=[16], dropout=0.3)

    def head_after(draws: int, seed_spec=spec):
        seed_everything(7)
        for _ in range(draws):
            random.random()
        head = build_head(seed_spec, 24)
        x = np.random.default_rng(0).normal(size=(64, 24)).astype("float32")
        # training=True: dropout masks come from the layers' own seed generators.
        return [w.copy() for w in head.get_weights()], np.asarray(head(x, training=True))

    (w_a, out_a), (w_b, out_b) = head_after(0), head_after(5)
    for a, b in zip(w_a, w_b, strict=False):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(out_a, out_b)
    from dataclasses import replace

    w_c, _ = head_after(0, replace(spec, seed=spec.seed + 1))
    assert not np.array_equal(w_a[0], w_c[0])
