"""The GPU-only code paths, run where an NVIDIA GPU is (skipped elsewhere: the `gpu` marker):
mixed float16, the mirrored strategy over the GPUs, and onnxruntime on CUDA with IO binding."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_mixed_precision_is_float16_and_mirrored_spans_every_gpu() -> None:
    # A fresh process: a strategy and a precision policy are made once per process.
    code = """
import json, tensorflow as tf
from stages.params import Params
from stages.runtime import configure
from tests.tiny_project import tiny_params
p = tiny_params(); p["runtime"].update(mixed_precision=True, strategy="mirrored")
rt = configure(Params.model_validate(p))
print(json.dumps({"policy": rt.settings()["policy"],
                  "replicas": rt.replicas, "gpus": len(tf.config.list_physical_devices("GPU"))}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout
    import json

    got = json.loads(out.strip().splitlines()[-1])
    assert "mixed_float16" in got["policy"] and got["replicas"] == got["gpus"] >= 1


def test_onnxruntime_runs_on_cuda_with_io_binding(tmp_path) -> None:
    import keras
    import onnx
    import tf2onnx

    from stages.bench_timing import onnx_runner
    from stages.onnx_io import open_model

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    proto, _ = tf2onnx.convert.from_keras(model, opset=17)
    onnx.save(proto, str(tmp_path / "tiny.onnx"))
    cuda = open_model(
        tmp_path / "tiny.onnx", ["CUDAExecutionProvider"], allow_fallback=False, threads=0, graph_optimization="all"
    )
    assert cuda.provider == "CUDAExecutionProvider"
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    expected = model.predict(pixels, verbose=0)
    call = onnx_runner(cuda, pixels, io_binding=True)
    (bound,) = call()  # input bound on the GPU once, the output kept there
    assert bound.device_name().lower() == "cuda"
    np.testing.assert_allclose(bound.numpy(), expected, atol=1e-3)
    np.testing.assert_allclose(call()[0].numpy(), expected, atol=1e-3)  # the same binding, run again
    np.testing.assert_allclose(cuda.predict(pixels.astype(np.uint8), batch_size=4), expected, atol=1e-3)
