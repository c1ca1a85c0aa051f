"""A tiny model in the pipeline's contract, with real ImageNet weights.

uint8-valued 32×32 RGB in → Resizing → MobileNetV2 preprocessing (x/127.5 - 1) → MobileNetV2 α=0.35
(the shared ImageNet weights, BatchNorm in inference mode) → global average pooling → softmax.
Real weights matter: a Keras application with weights=None gives near-constant outputs, on which
a parity check passes whatever the export did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.conftest import MOBILENET_V2_035


def build_tiny_model(num_classes: int, image_size: int = 32, inner_size: int = 48, seed: int = 0):
    """A small classifier; `inner_size` != `image_size` keeps the in-model Resize a real op."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Resizing(inner_size, inner_size, interpolation="bilinear")(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(x)
    base = keras.applications.MobileNetV2(
        input_shape=(inner_size, inner_size, 3), alpha=0.35, include_top=False, weights=str(MOBILENET_V2_035)
    )
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # A large init spreads the logits: probabilities that are not all ~1/C make parity meaningful.
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=seed)
    )(x)
    return keras.Model(inputs, outputs, name="tiny")


def save_tiny_model(path: Path, num_classes: int, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    build_tiny_model(num_classes, **kwargs).save(path)
    return path


def fit_head(model, images: np.ndarray, labels: np.ndarray, epochs: int = 3) -> None:
    """A few epochs on the dense head only, so that accuracies mean something on synthetic data."""
    import keras

    for layer in model.layers[:-1]:
        layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    model.fit(images.astype("float32"), labels, epochs=epochs, batch_size=32, verbose=0)


# ---------------------------------------------------------------- one exported project per test session

CLASSES = ["cat", "dog", "frog"]
_PROJECT: dict[str, Path] = {}


def tiny_params():
    """The default params shrunk to seconds: few images, tiny sweeps, CPU only."""
    from tlpipe.config.params import Params, with_overrides

    return with_overrides(
        Params(),
        evaluate={"batch_size": 16, "grid_images": 12},
        export={"parity": {"images": 24}, "int8": {"calibration_images": 24}, "batch_size": 16},
        benchmark={
            "providers": ["CPUExecutionProvider"],
            "allow_fallback": False,
            "batch_sizes": [1, 4],
            "warmup": 1,
            "iterations": 3,
        },
    )


def tiny_project(tmp_path_factory) -> Path:
    """A project root with prepared data, a trained tiny model.keras and its export, built once.

    Shared by the evaluate, export and benchmark tests (module-level cache: a fixture imported
    into several test modules would be built once per module). Tests may add reports to it but
    must not change its data or models.
    """
    if "root" not in _PROJECT:
        from stages import export
        from tests.conftest import write_prepared
        from tlpipe.data.dataset import load_split
        from tlpipe.paths import Paths

        root = tmp_path_factory.mktemp("tiny_project")
        write_prepared(root / "data" / "prepared", CLASSES, {"train": 16, "val": 4, "test": 8})
        model = build_tiny_model(len(CLASSES))
        x, y = load_split(root / "data" / "prepared", "train")
        fit_head(model, x, y)
        (root / "models").mkdir()
        model.save(root / "models" / "model.keras")
        export.run(tiny_params(), Paths(root))
        _PROJECT["root"] = root
    return _PROJECT["root"]
