"""Test-time augmentation inside the shipped model: the mean of the probabilities of an image and
of its mirror image (`tta: flip`), built from built-in Keras layers only, so the saved model and
its ONNX export need no custom code.

The mirror image is a matrix product along the width: (N,H,W,C) is permuted to (N,H,C,W),
multiplied by the W×W anti-diagonal 0/1 matrix (exact in float32: one product by 1, the rest by
0) and permuted back; tf2onnx turns it into Transpose, MatMul, Transpose.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TTA_MODES = ("none", "flip")


def with_tta(model: Any, mode: str) -> Any:
    """`model` itself (mode none), or a model averaging its outputs over the image and its mirror."""
    import keras

    if mode == "none":
        return model
    if mode != "flip":
        raise ValueError(f"tta={mode!r}: expected one of {', '.join(TTA_MODES)}")
    shape = tuple(model.inputs[0].shape[1:])
    width = shape[1]
    inputs = keras.Input(shape, dtype=model.inputs[0].dtype, name="image")
    x = keras.layers.Permute((1, 3, 2), name="tta_width_last")(inputs)
    mirror = keras.layers.Dense(
        width,
        use_bias=False,
        trainable=False,
        kernel_initializer=keras.initializers.Constant(np.eye(width, dtype=np.float32)[::-1]),
        name="tta_mirror",
    )(x)
    mirrored = keras.layers.Permute((1, 3, 2), name="tta_width_back")(mirror)
    probs = keras.layers.Average(name="tta_mean")([model(inputs), model(mirrored)])
    return keras.Model(inputs, probs, name=f"{model.name}_tta_{mode}")
