"""Keras → ONNX with tf2onnx, and the pipeline's interface on the result.

tf2onnx `from_keras` freezes the model's variables (`from_function` left the caffe-style mean of
ResNet50/VGG preprocessing as an extra graph input). The ONNX model's interface is then fixed to
the pipeline's contract: input `pixels`, uint8 NHWC at the data's size, dynamic batch; output
`probabilities`. uint8 makes "pixels 0..255" part of the type and moves a quarter of the bytes
of float32 to the device. The class names and image shape ride in the model's metadata.

Same model, same bytes: tf2onnx numbers the names it makes up (`pad_const__76`) from a counter
whose value differs from run to run, and orders initializers accordingly; `canonical_names`
renumbers every such name in the order the graph uses it, and `without_noop_reshapes` drops the
Reshapes to an unchanged shape that tf2onnx keeps in some runs and folds in others.
"""

from __future__ import annotations

import json
import re
from typing import Any

from tlpipe.data.dataset import DatasetInfo
from tlpipe.export.contract import INPUT_NAME, OUTPUT_NAME
from tlpipe.util.errors import ModelError


def convert(model: Any, opset: int, info: DatasetInfo | None = None, metadata: dict[str, str] | None = None) -> Any:
    """tf2onnx conversion of a Keras model, with the pipeline's uint8-pixels interface."""
    import tf2onnx

    try:
        proto, _ = tf2onnx.convert.from_keras(model, opset=opset)
    except Exception as err:  # noqa: BLE001 - tf2onnx raises many kinds
        raise ModelError(
            f"tf2onnx could not convert the Keras model at opset {opset}: {type(err).__name__}: {err}"
        ) from None
    return canonical_names(without_noop_reshapes(with_pixel_interface(proto, info, metadata)))


def with_pixel_interface(proto: Any, info: DatasetInfo | None = None, metadata: dict[str, str] | None = None) -> Any:
    """Rename input/output to `pixels`/`probabilities`, make the input uint8, name the batch dim.

    A float model input gets a Cast from uint8 in front, so the graph itself is unchanged.
    """
    import onnx
    from onnx import TensorProto, helper

    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ModelError(
            f"expected a converted model with one input and one output, got {len(graph.input)} and {len(graph.output)}"
        )
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
        props = {"classes": json.dumps(info.classes), "image_shape": json.dumps(list(info.image_shape))}
        helper.set_model_props(proto, {**props, **(metadata or {})})
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


def without_noop_reshapes(proto: Any) -> Any:
    """The graph without Reshapes to the shape their input already has (at most the batch unknown,
    given as -1). tf2onnx leaves some of them and folds others, and which ones changes from run to
    run: its transpose optimizer iterates a set of node objects, in memory-address order. Without
    them the same model always converts to the same graph."""
    from onnx import numpy_helper, shape_inference

    graph = proto.graph
    inferred = shape_inference.infer_shapes(proto).graph
    shapes = {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.value_info, *inferred.input)
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape")
    }
    constants = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    bypass: dict[str, str] = {}  # a no-op Reshape's output → its input
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in constants or node.output[0] in outputs:
            continue
        source = shapes.get(node.input[0])
        target = numpy_helper.to_array(constants[node.input[1]]).tolist()
        if source is None or len(source) != len(target) or sum(d is None for d in source) > 1:
            continue
        if all(t == d if d is not None else t == -1 for t, d in zip(target, source, strict=True)):
            bypass[node.output[0]] = node.input[0]
    if not bypass:
        return proto
    kept = [n for n in graph.node if not (n.op_type == "Reshape" and n.output[0] in bypass)]

    def source_of(name: str) -> str:  # through a chain of no-op Reshapes
        while name in bypass:
            name = bypass[name]
        return name

    for node in kept:
        node.input[:] = [source_of(n) for n in node.input]
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    for unused in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(unused)
    return proto


_GENERATED = re.compile(r"^(.*?)(?:__\d+)+(:\d+)?$")  # tf2onnx's made-up numbers: x__12, x__3__4, x__7:0


def canonical_names(proto: Any) -> Any:
    """Names tf2onnx made up, made a function of the graph: nodes and tensors renumbered in order of
    first use, each constant named after its first consumer (tf2onnx merges equal constants and
    keeps one of their names, a different one from run to run), initializers in order of use."""
    graph = proto.graph
    nodes = _renumber([n.name for n in graph.node])
    constants = {t.name for t in graph.initializer}
    tensors: dict[str, str] = {}
    order: list[str] = []
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name in constants and name not in tensors:
                tensors[name] = f"{nodes[node.name]}/input_{slot}"
        order += [n for n in (*node.input, *node.output) if n and n not in constants]
    tensors.update(_renumber(list(dict.fromkeys(order))))
    for node in graph.node:
        node.name = nodes[node.name]
        node.input[:] = [tensors.get(n, n) for n in node.input]
        node.output[:] = [tensors.get(n, n) for n in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        value.name = tensors.get(value.name, value.name)
    position = {name: i for i, name in enumerate(tensors.values())}
    initializers = sorted(graph.initializer, key=lambda t: (position.get(t.name, len(position)), t.name))
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    return proto


def _renumber(names: list[str]) -> dict[str, str]:
    """old → new: made-up numbers dropped, then `__k` put back (k counting per base name)."""
    mapping: dict[str, str] = {}
    taken = {n for n in names if not _GENERATED.match(n)}
    counters: dict[tuple[str, str], int] = {}
    for name in names:
        match = _GENERATED.match(name)
        if name in mapping or not match:
            mapping.setdefault(name, name)
            continue
        base = (match.group(1), match.group(2) or "")
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base[0]}__{counters[base]}{base[1]}"
            if candidate not in taken:
                break
        taken.add(candidate)
        mapping[name] = candidate
    return mapping
