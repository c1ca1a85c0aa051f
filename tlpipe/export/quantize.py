"""Reduced-precision variants of the exported model: float16 and static int8 (onnxruntime's tools)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlpipe.data.dataset import split_records
from tlpipe.export.contract import INPUT_NAME
from tlpipe.paths import Paths

if TYPE_CHECKING:
    from tlpipe.config.export import Int8Params


def to_fp16(fp32_path: Path, out_path: Path) -> None:
    """Float16 weights and compute, float32/uint8 interface kept (onnxruntime's float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    # Resize stays float32: with `tta: flip` two Resize nodes share their scales initializer, and
    # the converter then casts it for one node and not the other, which leaves a Resize that
    # onnxruntime refuses to load ("Either `sizes` or `scales` must be provided"). Resizing the
    # raw input image costs little next to the backbone.
    proto = convert_float_to_float16(
        onnx.load(str(fp32_path)), keep_io_types=True, op_block_list=[*DEFAULT_OP_BLOCK_LIST, "Resize"]
    )
    onnx.save(proto, str(out_path))


def to_int8(fp32_path: Path, out_path: Path, *, calibration: np.ndarray, p: Int8Params, batch_size: int) -> None:
    """Static INT8 quantization calibrated on `calibration` (uint8 train images), for the CPU or
    the GPU (`p.target`)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, images: np.ndarray, batch_size: int) -> None:
            self._batches = (
                {INPUT_NAME: np.ascontiguousarray(images[i : i + batch_size])}
                for i in range(0, len(images), batch_size)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    # TensorRT and onnxruntime's CUDA kernels take int8 activations with zero point 0 (signed,
    # symmetric); x86 CPUs run uint8 activations against int8 weights (u8s8) fastest.
    gpu = p.target == "gpu"
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        # Shape inference + graph folding first, as onnxruntime recommends; symbolic shape
        # inference needs sympy and nothing here has symbolic shapes but the batch.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        # The softmax and what follows it (the mean of `tta: flip`) stay float: quantized, the
        # probabilities would round to 1/255 and the mean of two of them lose its scale.
        tail = probability_tail(onnx.load(str(pre)).graph)
        ranges = None
        if p.method == "entropy":
            ranges = entropy_ranges(pre, Reader(calibration, batch_size), Path(tmp))
        quantize_static(
            str(pre),
            str(out_path),
            Reader(calibration, batch_size),
            quant_format=QuantFormat.QDQ if p.format == "qdq" else QuantFormat.QOperator,
            per_channel=p.per_channel,
            reduce_range=p.reduce_range,
            activation_type=QuantType.QInt8 if gpu else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[p.method],
            nodes_to_exclude=tail,
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True} if gpu else {},
            calibration_cache_path=ranges,
        )


# quantize_static hands the entropy calibrator no bin counts, and its defaults (128 histogram bins
# for 128 quantized bins) leave a single candidate threshold, the full range: minmax under another
# name. TensorRT's recipe instead: a 2048-bin histogram searched for the 128-bin window of least
# KL divergence, which clips rare outliers.
ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}


def entropy_ranges(model: Path, reader: Any, scratch: Path) -> Path:
    """The activation ranges of `model`'s quantizable operators by entropy calibration, in the
    calibration cache file quantize_static reads instead of calibrating itself."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    calibrator = create_calibrator(
        model,
        sorted(set(QLinearOpsRegistry) | set(QDQRegistry)),  # quantize_static's own default list
        augmented_model_path=str(scratch / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options=ENTROPY_BINS,
    )
    calibrator.collect_data(reader)
    path = scratch / "entropy_ranges.json"
    save_tensors_data(calibrator.compute_data(), path)
    return path


def probability_tail(graph: Any) -> list[str]:
    """Names of the Softmax nodes and of every node downstream of them."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    tail: dict[str, None] = {}
    todo = [n for n in graph.node if n.op_type == "Softmax"]
    while todo:
        node = todo.pop()
        if node.name in tail:
            continue
        tail[node.name] = None
        todo += [c for out in node.output for c in consumers.get(out, [])]
    return list(tail)


def calibration_images(paths: Paths, n: int, seed: int) -> np.ndarray:
    """`n` train images, a seeded sample so that calibration never sees the test split."""
    train = split_records(paths.prepared, "train")
    idx = np.sort(np.random.default_rng(seed).permutation(train.count)[: min(n, train.count)])
    return train.gather(idx)[0]
