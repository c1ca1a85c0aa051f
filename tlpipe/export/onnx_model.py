"""onnxruntime sessions shared by export and benchmark: open, check against the data, predict.

Two facts of onnxruntime-gpu shape this module:
- `get_available_providers()` lists the TensorRT and CUDA providers whenever the GPU build is
  installed, GPU or not; a session whose GPU provider fails to load falls back to CPU with only a
  log line. Only `session.get_providers()` tells the truth, so `open_model` reads it back.
- The GPU build needs CUDA 13 and cuDNN 9 libraries; `preload_gpu_libraries` loads them from the
  pip-installed nvidia packages (README: GPU install) before the first GPU session.

TensorRT names a cached engine after the graph's names and shapes, not its weights, and
`canonical_names` makes those identical across retrains; so each model file (by content hash)
gets its own engine cache folder, and one optimisation profile covering batch 1 to the largest
batch the caller will run, so that neither a retrained model nor a new batch size reuses or
rebuilds the wrong engine (`session_providers`).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlpipe.data.dataset import DatasetInfo
from tlpipe.export.contract import CPU, GPU_PROVIDERS, TENSORRT
from tlpipe.model.keras_io import check_probabilities
from tlpipe.util.errors import ModelError, first_line

log = logging.getLogger(__spec__.name)

# ONNX input types the stages can feed (the exported model takes uint8; others are accepted so
# that a hand-made float model can be evaluated too).
_INPUT_DTYPES = {"tensor(uint8)": np.uint8, "tensor(float)": np.float32, "tensor(float16)": np.float16}
_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
# cuDNN for CUDA 13, installed apart from TensorFlow's cuDNN for CUDA 12 (both packages write
# site-packages/nvidia/cudnn/lib/libcudnn.so.9): README, GPU install.
CUDNN_DIR_ENV = "TLPIPE_ORT_CUDNN_DIR"


class ProviderError(ModelError):
    """An execution provider that was asked for is not available, or the session is not on it."""


@dataclass
class OnnxModel:
    path: Path
    session: Any  # onnxruntime.InferenceSession
    provider: str  # the provider the session really runs on
    requested: list[str]

    @property
    def input(self) -> Any:
        return self.session.get_inputs()[0]

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(_INPUT_DTYPES[self.input.type])

    def predict(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """Class probabilities (float32, N×C) for uint8 images, batch by batch."""
        name, out = self.input.name, []
        for i in range(0, len(images), batch_size):
            batch = np.asarray(images[i : i + batch_size]).astype(self.input_dtype, copy=False)
            out.append(np.asarray(self.session.run(None, {name: batch})[0], dtype=np.float32))
        if not out:
            return np.zeros((0, self.session.get_outputs()[0].shape[-1]), np.float32)
        probs = np.concatenate(out)
        check_probabilities(probs, str(self.path))
        return probs


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def open_model(
    path: str | Path,
    providers: list[str] | tuple[str, ...] = (CPU,),
    *,
    allow_fallback: bool = False,
    threads: int = 0,
    graph_optimization: str = "all",
    info: DatasetInfo | None = None,
    max_batch: int = 64,
) -> OnnxModel:
    """An onnxruntime session on the first usable provider of `providers`, checked against `info`.

    Without `allow_fallback`, a provider missing from this onnxruntime build, or a session that
    ends up on another provider than the first one asked for, is a `ProviderError`.
    `max_batch`: the largest batch the caller will run (TensorRT builds its engine for 1..max_batch).
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ONNX model not found; run the export stage first (dvc repro export)")
    requested = list(providers)
    available = available_providers()
    if not gpu_device_present():
        # The GPU build lists TensorRT and CUDA anyway; asking for them here would only fail
        # to load their libraries (loudly) and fall back to CPU.
        available = [p for p in available if p not in GPU_PROVIDERS]
    missing = [p for p in requested if p not in available]
    if missing and not allow_fallback:
        raise ProviderError(
            f"execution provider(s) {', '.join(missing)} not available in onnxruntime {ort.__version__}"
            f"{'' if gpu_device_present() else ' on this machine (no NVIDIA GPU device)'}; "
            f"available: {', '.join(available)} (or set allow_fallback: true in benchmark or predict)"
        )
    if missing:
        log.warning(
            "providers %s not available here (allow_fallback is on); trying %s",
            missing,
            [p for p in requested if p in available],
        )
    usable = [p for p in requested if p in available]
    if not usable:
        raise ProviderError(f"none of the providers {requested} is available; available: {', '.join(available)}")
    if any(p in GPU_PROVIDERS for p in usable):
        preload_gpu_libraries()

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[graph_optimization])
    try:
        session = ort.InferenceSession(str(path), options, providers=session_providers(path, usable, max_batch))
    except Exception as err:  # noqa: BLE001 - InvalidProtobuf, InvalidGraph, Fail, NoSuchFile... from the C++ side
        raise ModelError(f"{path}: not a loadable ONNX model ({type(err).__name__}: {first_line(err)})") from None
    actual = session.get_providers()[0]
    if actual != usable[0]:
        message = (
            f"{path}: asked for {usable[0]} but the session runs on {actual}: onnxruntime could not load "
            "the provider (no GPU, or CUDA 13 / cuDNN 9 libraries missing: see the README's GPU install)"
        )
        if not allow_fallback:
            raise ProviderError(message)
        log.warning("%s; allow_fallback is on, going on with %s", message, actual)
    model = OnnxModel(path=path, session=session, provider=actual, requested=requested)
    if info is not None:
        check_input(model, info)
    return model


def check_input(model: OnnxModel, info: DatasetInfo) -> None:
    """The model must take NHWC images of the data's size with a dynamic batch, one score per class."""
    inputs, outputs = model.session.get_inputs(), model.session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(f"{model.path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
    inp = inputs[0]
    if inp.type not in _INPUT_DTYPES:
        raise ModelError(f"{model.path}: input {inp.name!r} has type {inp.type}; expected uint8 (or float) pixels")
    shape = list(inp.shape)
    if len(shape) != 4 or [d if isinstance(d, int) else None for d in shape[1:]] != list(info.image_shape):
        raise ModelError(
            f"{model.path}: input {inp.name!r} has shape {shape}; the data's images need "
            f"[batch, {', '.join(map(str, info.image_shape))}] (NHWC)"
        )
    if isinstance(shape[0], int) and shape[0] > 0:
        raise ModelError(
            f"{model.path}: input {inp.name!r} has a fixed batch size {shape[0]}; export with a dynamic batch"
        )
    classes = outputs[0].shape[-1] if outputs[0].shape else None
    if isinstance(classes, int) and classes != info.num_classes:
        raise ModelError(f"{model.path}: {classes} outputs but the data has {info.num_classes} classes")


def gpu_device_present() -> bool:
    """An NVIDIA driver device node is there: /dev/nvidiactl on Linux (containers get it when a GPU
    is passed in), /dev/dxg under WSL2, where the Windows driver serves CUDA. A /dev/dxg of another
    vendor's GPU only means a GPU session is tried: `open_model` then sees it land on CPU."""
    return Path("/dev/nvidiactl").exists() or Path("/dev/dxg").exists()


def session_providers(path: Path, providers: list[str], max_batch: int) -> list[tuple[str, dict[str, Any]]]:
    """The (provider, options) list an InferenceSession for `path` is given."""
    out = []
    for provider in providers:
        if provider == TENSORRT:
            out.append((provider, tensorrt_options(path, max_batch)))
        else:
            out.append((provider, {}))
    return out


def trt_cache_root() -> Path:
    return Path(os.environ.get("TLPIPE_TRT_CACHE", "data/trt_cache")).resolve()


def tensorrt_options(path: Path, max_batch: int) -> dict[str, Any]:
    """TensorRT options for the model in `path`: its own engine cache folder (by content hash and
    batch range), the precision the model was quantised for, and one profile for batch 1..max_batch.

    Engines take minutes to build, so they are cached; the timing cache (per-layer kernel timings,
    valid for any model) is shared. TensorRT runs float32 unless told: the fp16 variant gets
    `trt_fp16_enable`, a QDQ int8 model `trt_int8_enable` (its scales come from the Q/DQ nodes, no
    calibration table); a float32 model stays float32, so that what runs is what export scored.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch={max_batch}: expected a positive batch size")
    facts = model_facts(path)
    root = trt_cache_root()
    cache = root / facts["sha256"][:16] / f"batch1-{max_batch}"
    cache.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(root),
        "trt_fp16_enable": facts["precision"] == "fp16",
        "trt_int8_enable": facts["precision"] == "int8",
    }
    name, dims = facts["input"], facts["input_dims"]
    if dims and all(isinstance(d, int) and d > 0 for d in dims):
        # One profile from batch 1 (a short last batch) to the largest, tuned for the largest: no
        # engine rebuild per batch size.
        rest = "x".join(map(str, dims))
        options["trt_profile_min_shapes"] = f"{name}:1x{rest}"
        options["trt_profile_opt_shapes"] = f"{name}:{max_batch}x{rest}"
        options["trt_profile_max_shapes"] = f"{name}:{max_batch}x{rest}"
    return options


# Ops of a statically quantised model in onnxruntime's QDQ format (the one TensorRT can run).
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def model_facts(path: Path) -> dict[str, Any]:
    """Content hash, first input's name and non-batch dims, and precision (fp32, fp16, int8) of an
    ONNX file, read from the file itself."""
    import onnx

    data = Path(path).read_bytes()
    proto = onnx.load_model_from_string(data)
    graph = proto.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if not inputs:
        raise ModelError(f"{path}: the graph has no input")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim][1:]
    if any(n.op_type in _QDQ_OPS for n in graph.node):
        precision = "int8"
    elif any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer):
        precision = "fp16"
    else:
        precision = "fp32"
    return {
        "sha256": hashlib.sha256(data).hexdigest(),
        "input": inputs[0].name,
        "input_dims": dims,
        "precision": precision,
    }


def preload_gpu_libraries() -> None:
    """Load CUDA 13 and cuDNN 9 from the nvidia pip packages, once, on a machine with an NVIDIA device.

    Without a GPU there is nothing to load; onnxruntime then falls back to CPU (and open_model
    reports it).
    """
    global _preloaded
    if _preloaded or not gpu_device_present():
        return
    import onnxruntime as ort

    cudnn_dir = os.environ.get(CUDNN_DIR_ENV)
    ort.preload_dlls(cuda=True, cudnn=cudnn_dir is None)
    if cudnn_dir:
        ort.preload_dlls(cuda=False, cudnn=True, directory=cudnn_dir)
    _preloaded = True


_preloaded = False
