"""Export stage: models/model.keras -> models/model.onnx (+ fp16 / int8 variants), verified.

- Conversion: tf2onnx `from_keras` (it freezes the model's variables; `from_function` left the
  caffe-style mean of ResNet50/VGG preprocessing as an extra graph input). The ONNX model's
  interface is then fixed to the pipeline's contract: input `pixels`, uint8 NHWC at the data's
  size, dynamic batch; output `probabilities`. uint8 makes "pixels 0..255" part of the type and
  moves a quarter of the bytes of float32 to the device.
- Parity: Keras and onnxruntime (CPU) on the first test images; past the limits in
  `export.parity` the stage fails and writes nothing.
- Variants (`export.variants`): fp16 (weights and compute in float16, float32 interface) and
  int8 (static quantization, calibrated on train images), each scored on the test split against
  float32; a drop past `export.max_variant_accuracy_drop` points fails the stage.

Outputs: models/model.onnx, models/variants/model.<variant>.onnx, reports/export/metrics.json.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from stages.atomic import atomic_dir, atomic_file, write_json
from stages.dataset import DatasetInfo, load_info, load_split
from stages.model_io import ModelError, keras_predict, load_keras_model
from stages.onnx_io import CPU, INPUT_NAME, OUTPUT_NAME, open_model
from stages.params import ExportParams, Int8Params, ParityParams, Params
from stages.paths import Paths

log = logging.getLogger(__name__)

VARIANTS_DIR = "variants"


class ParityError(ModelError):
    """The ONNX model does not compute what the Keras model computes."""


class VariantError(ModelError):
    """A reduced-precision variant loses more accuracy than params allow."""


def variant_path(paths: Paths, variant: str) -> Path:
    """Where an export variant lives: fp32 is models/model.onnx itself."""
    if variant == "fp32":
        return paths.onnx_model
    return paths.models / VARIANTS_DIR / f"model.{variant}.onnx"


# ---------------------------------------------------------------- conversion


def convert(model: Any, opset: int, info: DatasetInfo | None = None) -> Any:
    """tf2onnx conversion of a Keras model, with the pipeline's uint8-pixels interface."""
    import tf2onnx

    try:
        proto, _ = tf2onnx.convert.from_keras(model, opset=opset)
    except Exception as err:
        raise ModelError(f"tf2onnx could not convert the Keras model at opset {opset}: {type(err).__name__}: {err}") from None
    return with_pixel_interface(proto, info)


def with_pixel_interface(proto: Any, info: DatasetInfo | None = None) -> Any:
    """Rename input/output to `pixels`/`probabilities`, make the input uint8, name the batch dim.

    A float model input gets a Cast from uint8 in front, so the graph itself is unchanged.
    """
    import onnx
    from onnx import TensorProto, helper

    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ModelError(f"expected a converted model with one input and one output, got {len(graph.input)} and {len(graph.output)}")
    old_in, old_out = graph.input[0], graph.output[0]
    in_type = old_in.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in in_type.shape.dim]
    if in_type.elem_type == TensorProto.UINT8:
        _rename_tensor(graph, old_in.name, INPUT_NAME)
    else:
        # The Keras input may already be called `pixels`: its float tensor gets another name.
        float_name = f"{INPUT_NAME}_float"
        _rename_tensor(graph, old_in.name, float_name)
        new_in = helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", *dims[1:]])
        cast = helper.make_node("Cast", [INPUT_NAME], [float_name], to=in_type.elem_type, name="pixels_to_float")
        graph.node.insert(0, cast)
        graph.input.remove(old_in)
        graph.input.append(new_in)
    _rename_tensor(graph, old_out.name, OUTPUT_NAME)
    for value in (graph.input[0], graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    if info is not None:
        # Readers of the .onnx alone learn what the outputs mean.
        helper.set_model_props(proto, {"classes": json.dumps(info.classes), "image_shape": json.dumps(list(info.image_shape))})
    onnx.checker.check_model(proto)
    return proto


def _rename_tensor(graph: Any, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.name == old:
            value.name = new


# ---------------------------------------------------------------- parity


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max absolute probability difference and top-1 agreement of two N×C probability arrays."""
    if reference.shape != candidate.shape:
        raise ModelError(f"outputs differ in shape: {reference.shape} vs {candidate.shape}")
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()) if reference.size else 0.0,
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0,
    }


def check_parity(keras_probs: np.ndarray, onnx_probs: np.ndarray, limits: ParityParams) -> dict[str, Any]:
    """Parity figures; a `ParityError` naming both figures and limits if either is out of bounds."""
    result = {"images": len(keras_probs), **compare(keras_probs, onnx_probs)}
    passed = result["max_abs_diff"] <= limits.max_abs_diff and result["top1_agreement"] >= limits.min_top1_agreement
    result.update(passed=passed, max_abs_diff_limit=limits.max_abs_diff, min_top1_agreement=limits.min_top1_agreement)
    if not passed:
        raise ParityError(
            f"Keras/ONNX parity failed on {result['images']} test images: max |Δprob| {result['max_abs_diff']:.3g} "
            f"(limit {limits.max_abs_diff:g}), top-1 agreement {result['top1_agreement']:.4f} "
            f"(limit {limits.min_top1_agreement:g}); nothing was written"
        )
    return result


# ---------------------------------------------------------------- variants


def to_fp16(fp32_path: Path, out_path: Path) -> None:
    """Float16 weights and compute, float32/uint8 interface kept (onnxruntime's float16 converter)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(proto, str(out_path))


def to_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray, p: Int8Params, batch_size: int) -> None:
    """Static INT8 quantization calibrated on `calibration` (uint8 train images)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self, images: np.ndarray, batch_size: int) -> None:
            self._batches = (
                {INPUT_NAME: np.ascontiguousarray(images[i : i + batch_size])} for i in range(0, len(images), batch_size)
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        pre = Path(tmp) / "preprocessed.onnx"
        # Shape inference + graph folding first, as onnxruntime recommends; symbolic shape
        # inference needs sympy and nothing here has symbolic shapes but the batch.
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        # The last softmax stays float: its uint8 output would round probabilities to 1/255.
        softmax = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Softmax"]
        quantize_static(
            str(pre),
            str(out_path),
            Reader(calibration, batch_size),
            quant_format=QuantFormat.QDQ if p.format == "qdq" else QuantFormat.QOperator,
            per_channel=p.per_channel,
            reduce_range=p.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "entropy": CalibrationMethod.Entropy,
                "percentile": CalibrationMethod.Percentile,
            }[p.method],
            nodes_to_exclude=softmax,
        )


def calibration_images(paths: Paths, n: int, seed: int) -> np.ndarray:
    """`n` train images, a seeded sample so that calibration never sees the test split."""
    x, _ = load_split(paths.prepared, "train")
    idx = np.sort(np.random.default_rng(seed).permutation(len(x))[: min(n, len(x))])
    return np.asarray(x[idx])


# ---------------------------------------------------------------- the stage


def run(params: Params, paths: Paths) -> dict[str, Any]:
    p: ExportParams = params.export
    info = load_info(paths.prepared)
    x_test, y_test = load_split(paths.prepared, "test")
    model = load_keras_model(paths.model, info)
    n_eval = len(x_test) if p.eval_images is None else min(p.eval_images, len(x_test))
    # Seeded samples, not the first images: a split stored in class order would give a first
    # 2,000 images of four classes only.
    order = np.random.default_rng(params.seed).permutation(len(x_test))
    eval_idx = np.sort(order[:n_eval])
    x_eval, y_eval = np.asarray(x_test[eval_idx]), np.asarray(y_test[eval_idx])

    paths.models.mkdir(parents=True, exist_ok=True)
    # Everything is built and checked in a scratch directory beside the outputs, then moved.
    with tempfile.TemporaryDirectory(prefix=".export-", dir=paths.models) as scratch_dir:
        scratch = Path(scratch_dir)
        t0 = time.perf_counter()
        proto = convert(model, p.opset, info)
        import onnx

        onnx.save(proto, str(scratch / "model.onnx"))
        convert_s = time.perf_counter() - t0
        fp32 = open_model(scratch / "model.onnx", [CPU], info=info)

        x_parity = np.asarray(x_test[np.sort(order[: p.parity.images])])
        parity = check_parity(keras_predict(model, x_parity, p.batch_size), fp32.predict(x_parity, p.batch_size), p.parity)
        log.info("parity ok: %s", parity)

        reference = fp32.predict(x_eval, p.batch_size)
        scores: dict[str, dict[str, float]] = {"fp32": _score(reference, reference, y_eval, scratch / "model.onnx")}
        for variant in p.variants:
            out = scratch / f"model.{variant}.onnx"
            t0 = time.perf_counter()
            if variant == "fp16":
                to_fp16(scratch / "model.onnx", out)
            else:
                to_int8(scratch / "model.onnx", out, calibration_images(paths, p.int8.calibration_images, params.seed), p.int8, p.batch_size)
            build_s = time.perf_counter() - t0
            probs = open_model(out, [CPU], info=info).predict(x_eval, p.batch_size)
            scores[variant] = {**_score(reference, probs, y_eval, out), "build_s": round(build_s, 2)}
            drop = scores[variant]["accuracy_drop_points"]
            log.info("%s: %s", variant, scores[variant])
            if drop > p.max_variant_accuracy_drop:
                raise VariantError(
                    f"{variant} variant loses {drop:.2f} points of top-1 against float32 on {n_eval} test images "
                    f"(limit export.max_variant_accuracy_drop = {p.max_variant_accuracy_drop:g}); nothing was written"
                )

        metrics = {
            "opset": p.opset,
            "convert_s": round(convert_s, 2),
            "parity": parity,
            "eval_images": n_eval,
            "variants": scores,
        }
        # All checks passed: move the models into place, each file whole.
        with atomic_file(paths.onnx_model) as tmp:
            (scratch / "model.onnx").replace(tmp)
        with atomic_dir(paths.models / VARIANTS_DIR) as tmp:
            for variant in p.variants:
                (scratch / f"model.{variant}.onnx").replace(tmp / f"model.{variant}.onnx")
    with atomic_dir(paths.reports("export")) as tmp:
        write_json(tmp / "metrics.json", metrics)
    return metrics


def _score(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray, path: Path) -> dict[str, float]:
    """Accuracy of one variant and how far it is from the float32 ONNX model."""
    accuracy = float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0
    ref_accuracy = float((reference.argmax(1) == labels).mean()) if len(labels) else 0.0
    return {
        "accuracy": accuracy,
        "accuracy_drop_points": round(100 * (ref_accuracy - accuracy), 4),
        **compare(reference, probs),
        "size_mb": round(path.stat().st_size / 2**20, 3),
    }


def main() -> None:
    from stages.cli import run_stage

    run_stage(run)


if __name__ == "__main__":
    main()
