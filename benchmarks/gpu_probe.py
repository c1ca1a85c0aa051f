"""What this machine really offers, as JSON on stdout: `python benchmarks/gpu_probe.py tf|ort`.

Run in a child process per library, so that TensorFlow's CUDA 12 and onnxruntime's CUDA 13
libraries never share a process (as in the benchmark stage), and a crash in one leaves the other.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def tensorflow_facts() -> dict[str, Any]:
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    return {
        "tensorflow": tf.__version__,
        "built_cuda": build.get("cuda_version"),
        "built_cudnn": build.get("cudnn_version"),
        "physical_devices": [f"{d.device_type}:{d.name}" for d in tf.config.list_physical_devices()],
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
    }


def onnxruntime_facts() -> dict[str, Any]:
    """The providers a session really got for each request, not `get_available_providers()`:
    a provider can be listed as available and still fail to load its CUDA libraries."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tlpipe.export.contract import CPU, CUDA, TENSORRT
    from tlpipe.export.onnx_model import preload_gpu_libraries, session_providers

    preload_gpu_libraries()
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what the installed onnx writes by default can be newer than onnxruntime reads
    path = Path(tempfile.mkdtemp()) / "probe.onnx"
    onnx.save(model, path)
    obtained: dict[str, Any] = {}
    for provider in (TENSORRT, CUDA, CPU):
        try:
            sess = ort.InferenceSession(str(path), providers=session_providers(path, [provider, CPU], max_batch=2))
            sess.run(None, {"x": np.ones((2, 4), np.float32)})
            obtained[provider] = sess.get_providers()
        except Exception as err:  # noqa: BLE001 - the error is the finding, reported as such
            obtained[provider] = f"error: {type(err).__name__}: {err}"
    return {
        "onnxruntime": ort.__version__,
        "device": ort.get_device(),
        "available_providers": ort.get_available_providers(),
        "session_providers": obtained,
    }


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "ort"
    print(json.dumps(tensorflow_facts() if what == "tf" else onnxruntime_facts()))
