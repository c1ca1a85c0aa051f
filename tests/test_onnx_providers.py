"""What an onnxruntime session is given on a GPU machine, checked on this one: the TensorRT options
(an engine cache folder per model content and batch range, fp16 / int8 as the model was made,
one profile from batch 1 to the largest batch), and the provider really used, refused where
fallback is not allowed. Real ONNX files, built with onnx's helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tlpipe.export.contract import CPU, CUDA, TENSORRT
from tlpipe.export.onnx_model import (
    ProviderError,
    gpu_device_present,
    model_facts,
    open_model,
    session_providers,
    tensorrt_options,
)


def tiny_onnx(path: Path, *, scale: float = 1.0, precision: str = "fp32") -> Path:
    """uint8 NHWC pixels [batch, 8, 8, 3] -> class probabilities over 3 classes; `scale` is its weight
    (same names and shapes whatever the weight: as two trainings of one model export)."""
    dtype = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    np_dtype = np.float16 if precision == "fp16" else np.float32
    weight = numpy_helper.from_array(np.full((3, 3), scale, np_dtype), "w")
    nodes = [
        helper.make_node("Cast", ["pixels"], ["x"], to=dtype),
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1, 2], keepdims=0),
    ]
    initializers = [weight]
    if precision == "int8":
        initializers += [
            numpy_helper.from_array(np.array(0.5, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["m", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
            helper.make_node("MatMul", ["dq", "w"], ["logits"]),
        ]
    else:
        nodes.append(helper.make_node("MatMul", ["m", "w"], ["logits"]))
    nodes += [helper.make_node("Softmax", ["logits"], ["p"]), helper.make_node("Cast", ["p"], ["probabilities"], to=1)]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 8, 8, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def trt_cache(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "trt_cache"
    monkeypatch.setenv("TLPIPE_TRT_CACHE", str(root))
    return root


def test_each_model_gets_its_own_engine_cache_folder(tmp_path: Path, trt_cache: Path) -> None:
    first = tiny_onnx(tmp_path / "model_first.onnx", scale=1.0)
    retrained = tiny_onnx(tmp_path / "model_retrained.onnx", scale=2.0)
    copy = tmp_path / "model_copy.onnx"
    copy.write_bytes(first.read_bytes())

    def cache(path: Path, max_batch: int = 32) -> str:
        return tensorrt_options(path, max_batch)["trt_engine_cache_path"]

    # A retrained model (same names and shapes, other weights) never sees the old engine; the same
    # bytes anywhere share theirs; another batch range gets its own engine.
    assert cache(first) != cache(retrained)
    assert cache(first) == cache(copy)
    assert cache(first, 8) != cache(first, 32)
    assert Path(cache(first)).is_dir() and Path(cache(first)).is_relative_to(trt_cache)
    assert Path(cache(first)).parent.name == model_facts(first)["sha256"][:16]
    # Kernel timings hold for any model: one shared timing cache.
    assert tensorrt_options(first, 32)["trt_timing_cache_path"] == str(trt_cache.resolve())


@pytest.mark.parametrize(
    ("precision", "fp16", "int8"), [("fp32", False, False), ("fp16", True, False), ("int8", False, True)]
)
def test_tensorrt_runs_the_precision_the_model_was_made_for(
    tmp_path: Path, trt_cache: Path, precision: str, fp16: bool, int8: bool
) -> None:
    path = tiny_onnx(tmp_path / f"model.{precision}.onnx", precision=precision)
    assert model_facts(path)["precision"] == precision
    options = tensorrt_options(path, 32)
    assert (options["trt_fp16_enable"], options["trt_int8_enable"]) == (fp16, int8)
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]


def test_one_profile_covers_batch_1_to_the_largest(tmp_path: Path, trt_cache: Path) -> None:
    path = tiny_onnx(tmp_path / "model.onnx")
    options = tensorrt_options(path, 32)
    assert options["trt_profile_min_shapes"] == "pixels:1x8x8x3"
    assert options["trt_profile_opt_shapes"] == options["trt_profile_max_shapes"] == "pixels:32x8x8x3"
    with pytest.raises(ValueError, match="max_batch=0"):
        tensorrt_options(path, 0)


def test_a_session_list_gives_tensorrt_its_options_and_the_others_none(tmp_path: Path, trt_cache: Path) -> None:
    path = tiny_onnx(tmp_path / "model.onnx")
    given = session_providers(path, [TENSORRT, CUDA, CPU], max_batch=16)
    assert [name for name, _ in given] == [TENSORRT, CUDA, CPU]
    assert given[0][1] == tensorrt_options(path, 16) and given[1][1] == given[2][1] == {}
    # The CPU-only session of export and of this machine never touches the TensorRT cache.
    assert session_providers(path, [CPU], max_batch=16) == [(CPU, {})]


@pytest.mark.skipif(gpu_device_present(), reason="checks the refusal where no NVIDIA GPU is")
def test_the_provider_really_used_is_recorded_and_a_fallback_refused_unless_allowed(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "model.onnx")
    for gpu in (TENSORRT, CUDA):
        with pytest.raises(ProviderError, match=f"{gpu} not available .*no NVIDIA GPU.*allow_fallback"):
            open_model(path, [gpu, CPU], allow_fallback=False)
        model = open_model(path, [gpu, CPU], allow_fallback=True)
        assert model.provider == CPU and model.requested == [gpu, CPU]
        probs = model.predict(np.zeros((3, 8, 8, 3), np.uint8), batch_size=2)
        assert probs.shape == (3, 3)
