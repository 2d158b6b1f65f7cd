"""One int8 (Q/DQ) ONNX file for two runtimes: what each needs, checked and prepared without a GPU.

The export writes what TensorRT's ONNX parser accepts: symmetric int8 activations and weights,
every zero point an int8 0 (onnx-tensorrt's importer asserts "TRT only supports symmetric
quantization - zeroPt must be all zeros"). Two rewrites, each exact, adapt it at load time:

- ``fold_bias_dequantize`` (TensorRT): DequantizeLinear reads int8 (fp8/int4), never int32, so the
  int32 bias constants become the fp32 biases they stand for. They stay int32 in the file because
  ONNX Runtime fuses Conv into QLinearConv only when the bias comes through a DequantizeLinear.
- ``unsigned_activations`` (ONNX Runtime on x86): its fast kernels take uint8 activations, and its
  own int8 -> uint8 rewrite (QDQS8ToU8Transformer) only handles a Q with one consumer, so on
  branching graphs most convolutions stayed fp32 (14 of the 20 of the test model). An int8 Q/DQ
  pair with zero point 0 equals a uint8 pair with zero point 128 (same scale, q + 128, both
  saturating over 256 levels), so every activation pair is switched before the session is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class ZeroPointProblem:
    node: str
    problem: str


def _initializers(graph) -> dict:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in graph.initializer}


def _is_bias_dequantize(node, values: dict) -> bool:
    return node.op_type == "DequantizeLinear" and values.get(node.input[0], np.zeros(0, np.int8)).dtype == np.int32


def tensorrt_qdq_problems(graph, *, allow_int32_bias: bool = True) -> list[ZeroPointProblem]:
    """Every Q/DQ node TensorRT would refuse: a zero point that is not an int8 0 (or missing: ONNX
    then means uint8 0), or an int32 DequantizeLinear where ``allow_int32_bias`` is False."""
    values = _initializers(graph)
    problems = []
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        if _is_bias_dequantize(node, values):
            if not allow_int32_bias:
                problems.append(ZeroPointProblem(node.name, "dequantizes an int32 constant (a quantised bias)"))
            elif len(node.input) > 2 and node.input[2] and np.any(values.get(node.input[2], 0) != 0):
                problems.append(ZeroPointProblem(node.name, "int32 bias with a non-zero zero point"))
            continue
        if len(node.input) < 3 or not node.input[2]:
            problems.append(ZeroPointProblem(node.name, "no zero point (ONNX reads that as uint8)"))
            continue
        zero_point = values.get(node.input[2])
        if zero_point is None:
            problems.append(ZeroPointProblem(node.name, f"zero point {node.input[2]!r} is not a constant"))
        elif zero_point.dtype != np.int8:
            problems.append(ZeroPointProblem(node.name, f"zero point of type {zero_point.dtype}, not int8"))
        elif np.any(zero_point != 0):
            problems.append(ZeroPointProblem(node.name, f"{int(np.count_nonzero(zero_point))} non-zero zero point(s)"))
    return problems


def _copy(model):
    import onnx

    return onnx.ModelProto.FromString(model.SerializeToString())


def unsigned_activations(model):
    """A copy of ``model`` whose activation Q/DQ pairs with int8 zero point 0 use uint8 zero
    point 128 instead: the same numbers, in the type ONNX Runtime's x86 kernels fuse."""
    from onnx import numpy_helper

    model = _copy(model)
    graph = model.graph
    values = _initializers(graph)
    quantized = {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    shifted: dict[str, str] = {}  # int8 zero-point initializer -> its uint8 twin
    for node in graph.node:
        activation = node.op_type == "QuantizeLinear" or (node.op_type == "DequantizeLinear"
                                                         and node.input[0] in quantized)
        if not activation or len(node.input) < 3 or node.input[2] not in values:
            continue
        zero_point = values[node.input[2]]
        if zero_point.dtype != np.int8 or np.any(zero_point != 0):
            continue
        name = node.input[2]
        if name not in shifted:
            shifted[name] = name + "_u8"
            graph.initializer.append(numpy_helper.from_array(np.full(zero_point.shape, 128, np.uint8), shifted[name]))
        node.input[2] = shifted[name]
    _drop_unused_initializers(graph)
    return model


def _drop_unused_initializers(graph) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def fold_bias_dequantize(model):
    """A copy of ``model`` whose int32 bias DequantizeLinear nodes are replaced by the fp32
    constants they compute, (q - zero_point) * scale: what TensorRT gets from an int8 export."""
    from onnx import numpy_helper

    model = _copy(model)
    graph = model.graph
    values = _initializers(graph)
    folded, keep = [], []
    for node in graph.node:
        if not _is_bias_dequantize(node, values):
            keep.append(node)
            continue
        q = values[node.input[0]].astype(np.float64)
        scale = values[node.input[1]].astype(np.float64)
        zero = values[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if np.ndim(scale) == 1 and q.ndim > 1:  # per-axis parameters broadcast along ``axis``
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
        folded.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), node.output[0]))
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(folded)
    _drop_unused_initializers(graph)
    return model
