"""The exported model's contract, in one place: what every ONNX file the pipeline writes looks like
to the code that reads it (export, benchmark, predict), and the execution providers it runs on.

Tensor names: uint8 RGB pixels in (`INPUT_NAME`, NHWC), class probabilities out (`OUTPUT_NAME`).
"""

from __future__ import annotations

from typing import Literal

# The exported model's interface: uint8 RGB pixels in, class probabilities out.
INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)
# The providers params.yaml may name (benchmark.providers, predict.providers).
ProviderName = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
