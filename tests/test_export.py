"""Export stage on a tiny real model: tf2onnx, onnxruntime parity, fp16 and int8 variants, bad input."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from stages import export
from tests.tiny_models import CLASSES, tiny_params, tiny_project
from tlpipe.config.export import ParityParams
from tlpipe.config.params import with_overrides
from tlpipe.data.dataset import load_info, load_split
from tlpipe.export.contract import CPU, INPUT_NAME, OUTPUT_NAME
from tlpipe.export.onnx_model import ProviderError, gpu_device_present, open_model
from tlpipe.export.quantize import calibration_images, to_int8
from tlpipe.model.keras_io import keras_predict, load_keras_model
from tlpipe.paths import Paths
from tlpipe.util.errors import ModelError


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tiny_project(tmp_path_factory)


def fresh_copy(project: Path, dest: Path) -> Path:
    """Data and model.keras only: no exported outputs yet."""
    shutil.copytree(project / "data" / "prepared", dest / "data" / "prepared")
    (dest / "models").mkdir(parents=True)
    shutil.copy(project / "models" / "model.keras", dest / "models" / "model.keras")
    return dest


def test_export_writes_uint8_onnx_with_variants_and_parity(project: Path) -> None:
    import onnx

    paths = Paths(project)
    metrics = json.loads((paths.reports("export") / "metrics.json").read_text())
    assert metrics["parity"]["passed"] and metrics["parity"]["images"] == 24
    assert metrics["parity"]["max_abs_diff"] < 1e-4 and metrics["parity"]["top1_agreement"] == 1.0
    assert set(metrics["variants"]) == {"fp32", "fp16", "int8"}

    proto = onnx.load(str(paths.onnx_model))
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert (inp.name, out.name) == (INPUT_NAME, OUTPUT_NAME)
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["batch", 32, 32, 3]
    assert proto.opset_import[0].version == 17
    assert json.loads({p.key: p.value for p in proto.metadata_props}["classes"]) == CLASSES

    # Every variant opens, takes the same uint8 input and agrees with float32 on this easy data.
    info = load_info(paths.prepared)
    x, y = load_split(paths.prepared, "test")
    fp32 = open_model(paths.onnx_model, info=info).predict(x, 16)
    for variant in ("fp16", "int8"):
        path = export.variant_path(paths, variant)
        model = open_model(path, info=info)
        assert model.input_dtype == np.uint8
        probs = model.predict(x, 5)  # a batch size that leaves a remainder
        assert probs.shape == (len(x), len(CLASSES))
        assert np.abs(probs - fp32).max() < 0.1
        assert metrics["variants"][variant]["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    # The tiny head learnt something, so accuracies are not all chance.
    assert metrics["variants"]["fp32"]["accuracy"] > 0.5
    assert not list(paths.models.glob(".export-*")), "scratch directory left behind"


def test_int8_qoperator_and_entropy_variants_are_what_they_say_and_agree_with_float32(
    project: Path, tmp_path: Path
) -> None:
    from collections import Counter

    import onnx

    paths = Paths(project)
    info = load_info(paths.prepared)
    calib = calibration_images(paths, 16, seed=0)
    x, y = load_split(paths.prepared, "test")
    fp32 = open_model(paths.onnx_model, info=info).predict(x, 8)
    base = tiny_params().export.int8
    scales = {}
    for fmt, method in (("qoperator", "minmax"), ("qdq", "minmax"), ("qdq", "entropy")):
        out = tmp_path / f"{fmt}-{method}.onnx"
        to_int8(
            paths.onnx_model,
            out,
            calibration=calib,
            p=base.model_copy(update={"format": fmt, "method": method}),
            batch_size=8,
        )
        graph = onnx.load(str(out)).graph
        ops = Counter(node.op_type for node in graph.node)
        scales[method] = activation_scales(graph)
        if fmt == "qoperator":  # integer operators, float only at the ends (and the float softmax)
            assert ops["QLinearConv"] > 0 and ops["Conv"] == 0 and ops["QuantizeLinear"] == 1, ops
        else:  # float operators between quantize/dequantize pairs
            assert ops["Conv"] > 0 and ops["QLinearConv"] == 0 and ops["QuantizeLinear"] > 1, ops
        probs = open_model(out, info=info).predict(x, 5)
        assert probs.shape == (len(x), len(CLASSES))
        assert np.abs(probs - fp32).max() < 0.1, (fmt, method)
        assert (probs.argmax(1) == fp32.argmax(1)).mean() >= 0.875, (fmt, method)
    # Entropy calibration clips rare outliers: some activation ranges narrower than minmax's, none
    # wider (with onnxruntime's default bin counts it would equal minmax exactly).
    minmax, entropy = scales["minmax"], scales["entropy"]
    assert set(minmax) == set(entropy)
    assert all(entropy[t] <= minmax[t] for t in minmax) and any(entropy[t] < minmax[t] for t in minmax)


def activation_scales(graph) -> dict[str, float]:
    """The scale of every activation a QuantizeLinear node quantizes (weights are stored quantized)."""
    from onnx import numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {
        n.input[0]: float(init[n.input[1]])
        for n in graph.node
        if n.op_type == "QuantizeLinear" and n.input[1] in init and init[n.input[1]].ndim == 0
    }


def test_parity_failure_fails_the_stage_and_writes_nothing(project: Path, tmp_path: Path) -> None:
    root = fresh_copy(project, tmp_path)
    # float32 round-off (~1e-7) is above this limit: a real parity failure, not a mocked one.
    params = with_overrides(tiny_params(), export={"parity": {"max_abs_diff": 1e-12}, "variants": []})
    with pytest.raises(export.ParityError, match=r"parity failed on 24 test images: max \|Δprob\|"):
        export.run(params, Paths(root))
    assert not (root / "models" / "model.onnx").exists()
    assert not (root / "models" / "variants").exists()
    assert not (root / "reports").exists()
    assert sorted(p.name for p in (root / "models").iterdir()) == ["model.keras"]


def test_check_parity_catches_top1_disagreement() -> None:
    a = np.array([[0.6, 0.4], [0.3, 0.7]], np.float32)
    limits = ParityParams(images=2, max_abs_diff=0.5, min_top1_agreement=0.999)
    assert export.check_parity(a, a + 0.0, limits)["passed"]
    with pytest.raises(export.ParityError, match="top-1 agreement 0.0000"):
        export.check_parity(a, a[:, ::-1].copy(), limits)


def test_missing_and_corrupt_keras_model(prepared_dir: Path) -> None:
    paths = Paths(prepared_dir)
    with pytest.raises(ModelError, match="model.keras: model not found; run the finetune stage"):
        export.run(tiny_params(), paths)
    paths.models.mkdir()
    paths.model.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="not a loadable Keras model"):
        export.run(tiny_params(), paths)
    assert not paths.onnx_model.exists()


def test_keras_model_must_fit_the_data(project: Path, tmp_path: Path) -> None:
    info = load_info(Paths(project).prepared)
    with pytest.raises(
        ModelError, match=r"input shape \(None, 32, 32, 3\) does not match the data's images \(None, 48, 48, 3\)"
    ):
        load_keras_model(Paths(project).model, replace(info, image_shape=(48, 48, 3)))
    with pytest.raises(ModelError, match="3 outputs but the data has 4 classes"):
        load_keras_model(Paths(project).model, replace(info, classes=[*CLASSES, "owl"]))


def test_onnx_bad_files_and_input_mismatch(project: Path, tmp_path: Path) -> None:
    paths = Paths(project)
    info = load_info(paths.prepared)
    with pytest.raises(ModelError, match="ONNX model not found; run the export stage"):
        open_model(tmp_path / "missing.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(paths.onnx_model.read_bytes()[:1000])
    with pytest.raises(ModelError, match="corrupt.onnx: not a loadable ONNX model"):
        open_model(corrupt)
    with pytest.raises(
        ModelError, match=r"has shape \['batch', 32, 32, 3\]; the data's images need \[batch, 48, 48, 3\]"
    ):
        open_model(paths.onnx_model, info=replace(info, image_shape=(48, 48, 3)))
    with pytest.raises(ModelError, match="3 outputs but the data has 4 classes"):
        open_model(paths.onnx_model, info=replace(info, classes=[*CLASSES, "owl"]))


def test_unavailable_provider_is_an_error_unless_fallback(project: Path) -> None:
    path = Paths(project).onnx_model
    with pytest.raises(
        ProviderError, match="OpenVINOExecutionProvider not available .*available: .*CPUExecutionProvider"
    ):
        open_model(path, ["OpenVINOExecutionProvider", CPU])
    model = open_model(path, ["OpenVINOExecutionProvider", CPU], allow_fallback=True)
    assert model.provider == CPU
    if not gpu_device_present():
        # onnxruntime-gpu lists CUDA as available even here; the session would silently run on CPU.
        with pytest.raises(ProviderError, match="CUDAExecutionProvider not available .*no NVIDIA GPU"):
            open_model(path, ["CUDAExecutionProvider", CPU])
        assert open_model(path, ["CUDAExecutionProvider", CPU], allow_fallback=True).provider == CPU


def test_onnx_matches_keras_on_the_test_split(project: Path) -> None:
    paths = Paths(project)
    x, _ = load_split(paths.prepared, "test")
    keras_probs = keras_predict(load_keras_model(paths.model), x, 7)
    onnx_probs = open_model(paths.onnx_model).predict(x, 7)
    assert np.abs(keras_probs - onnx_probs).max() < 1e-4


def test_the_int8_gate_fails_the_export_with_its_numbers_and_writes_nothing(project: Path, tmp_path: Path) -> None:
    from tlpipe.config.params import Params

    assert Params().export.max_variant_accuracy_drop == 3.0  # the documented default, not "no gate"
    root = fresh_copy(project, tmp_path)
    # Calibrated on a single image, int8 clips most activations of the others: a real accuracy
    # loss, which a limit of 0 points must refuse.
    params = with_overrides(
        tiny_params(),
        export={"variants": ["int8"], "max_variant_accuracy_drop": 0.0, "int8": {"calibration_images": 1}},
    )
    with pytest.raises(export.VariantError) as failed:
        export.run(params, Paths(root))
    message = str(failed.value)
    assert re.search(
        r"int8 variant loses (\d+\.\d\d) points of top-1 against float32 on 24 test images "
        r"\(accuracy \d\.\d{4} against \d\.\d{4}; limit export.max_variant_accuracy_drop = 0\); nothing was written",
        message,
    ), message
    assert float(re.search(r"loses (\d+\.\d\d)", message).group(1)) > 0
    assert sorted(p.name for p in (root / "models").iterdir()) == ["model.keras"]
    assert not (root / "reports").exists()


def zero_points(path: Path) -> list[np.ndarray]:
    """The zero points of every QuantizeLinear node of an ONNX model."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return [inits[n.input[2]] for n in proto.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]


def test_the_gpu_int8_variant_is_signed_symmetric_and_passes_the_accuracy_gate(project: Path, tmp_path: Path) -> None:
    from tlpipe.config.params import ParamsError

    # The CPU variant (the default, exported by the fixture): uint8 activations, asymmetric.
    cpu = zero_points(export.variant_path(Paths(project), "int8"))
    assert any(z.dtype == np.uint8 for z in cpu)
    root = fresh_copy(project, tmp_path)
    params = with_overrides(tiny_params(), export={"variants": ["int8"], "int8": {"target": "gpu"}})
    metrics = export.run(params, Paths(root))
    # Through the same gate as any variant, on the CPU provider (the only one here).
    drop = metrics["variants"]["int8"]["accuracy_drop_points"]
    assert drop <= params.export.max_variant_accuracy_drop
    gpu = zero_points(export.variant_path(Paths(root), "int8"))
    assert gpu and all(z.dtype == np.int8 and not z.any() for z in gpu)  # signed, zero point 0
    with pytest.raises(ParamsError, match=r"int8.target='gpu' needs int8.format='qdq' \(got 'qoperator'\)"):
        with_overrides(tiny_params(), export={"int8": {"target": "gpu", "format": "qoperator"}})


def test_reshapes_to_the_shape_a_tensor_has_are_dropped_and_real_ones_kept() -> None:
    """tf2onnx keeps some no-op Reshapes in one run and folds them in another: the export drops
    them all, so the same model gives the same graph, and nothing it computes changes."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from tlpipe.export.convert import without_noop_reshapes

    shape = lambda name, dims: numpy_helper.from_array(np.array(dims, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "same"], ["r_same"], name="noop"),  # [-1, 4, 1, 1] on [N, 4, 1, 1]
        helper.make_node("Reshape", ["r_same", "same"], ["r_same2"], name="noop_again"),
        helper.make_node("Reshape", ["r_same2", "flat"], ["f"], name="real"),  # [-1, 4]: a real change
        helper.make_node("Softmax", ["f"], ["y"], name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [shape("same", [-1, 4, 1, 1]), shape("flat", [-1, 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    x = np.random.default_rng(0).normal(size=(3, 4, 1, 1)).astype(np.float32)
    before = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    cleaned = without_noop_reshapes(proto)
    onnx.checker.check_model(cleaned)
    assert [n.name for n in cleaned.graph.node] == ["relu", "real", "softmax"]
    assert [t.name for t in cleaned.graph.initializer] == ["flat"]
    after = ort.InferenceSession(cleaned.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(after[0], before[0])
