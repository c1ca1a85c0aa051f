"""The GPU-only code paths, run where an NVIDIA GPU is (skipped elsewhere: the `gpu` marker):
mixed precision as tlpipe.runtime.resolve picks it for these GPUs, the mirrored strategy over
them, and onnxruntime on CUDA with IO binding."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_mixed_precision_follows_the_gpus_and_mirrored_spans_every_gpu() -> None:
    # A fresh process: a strategy and a precision policy are made once per process.
    code = """
import json, tensorflow as tf
from tlpipe.config.params import Params
from tlpipe.runtime import configure
from tests.tiny_project import tiny_params
p = tiny_params(); p["runtime"].update(mixed_precision=True, strategy="mirrored")
rt = configure(Params.model_validate(p))
ccs = [tf.config.experimental.get_device_details(g).get("compute_capability")
       for g in tf.config.list_physical_devices("GPU")]
print(json.dumps({"policy": rt.settings()["policy"], "xla": rt.settings()["xla"],
                  "replicas": rt.replicas, "ccs": ccs}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300).stdout
    import json

    got = json.loads(out.strip().splitlines()[-1])
    ccs = [tuple(cc) for cc in got["ccs"]]
    assert got["replicas"] == len(ccs) >= 1
    # bfloat16 on Ampere and later; float16 loss scaling on one older GPU only (tlpipe.runtime.resolve).
    if all(cc >= (8, 0) for cc in ccs):
        assert got["policy"] == "mixed_bfloat16"
    else:
        assert got["policy"] == ("mixed_float16" if len(ccs) == 1 else "float32")


def test_onnxruntime_runs_on_cuda_with_io_binding(tmp_path) -> None:
    """onnxruntime's CUDA 13 session in a process of its own: TensorFlow (built for CUDA 12) loaded in
    the same process would bring its own CUDA and cuDNN libraries first, which the benchmark stage's
    Keras baseline avoids on purpose (a spawned child)."""
    import keras
    import onnx
    import tf2onnx

    inputs = keras.Input((32, 32, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    proto, _ = tf2onnx.convert.from_keras(model, opset=17)
    onnx.save(proto, str(tmp_path / "tiny.onnx"))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    np.save(tmp_path / "pixels.npy", pixels)
    np.save(tmp_path / "keras.npy", model.predict(pixels, verbose=0))
    code = """
import sys
from pathlib import Path
import numpy as np
from tlpipe.bench.timing import onnx_runner
from tlpipe.export.onnx_model import open_model
d = Path(sys.argv[1])
assert "tensorflow" not in sys.modules
cuda = open_model(d / "tiny.onnx", ["CUDAExecutionProvider"], allow_fallback=False, threads=0, graph_optimization="all")
assert cuda.provider == "CUDAExecutionProvider", cuda.provider
pixels = np.load(d / "pixels.npy")
expected = np.load(d / "keras.npy")
call = onnx_runner(cuda, pixels, io_binding=True)
(bound,) = call()  # input bound on the GPU once, the output kept there
assert bound.device_name().lower() == "cuda", bound.device_name()
np.testing.assert_allclose(bound.numpy(), expected, atol=1e-3)
np.testing.assert_allclose(call()[0].numpy(), expected, atol=1e-3)  # the same binding, run again
np.testing.assert_allclose(cuda.predict(pixels.astype(np.uint8), batch_size=4), expected, atol=1e-3)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]
