"""Issue 13, item 1: every int8 model the project writes or ships is one TensorRT's ONNX parser
accepts (symmetric int8, zero points 0), and the two load-time rewrites of engine/model/qdq.py
(fp32 biases for TensorRT, uint8 activations for ONNX Runtime on x86) compute the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bmengine.engine.backends.onnxruntime_backend import session_options
from bmengine.engine.model.card import load_card
from bmengine.engine.model.qdq import fold_bias_dequantize, tensorrt_qdq_problems, unsigned_activations
from conftest import pbc_files

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
SHIPPED_INT8 = sorted((REPO / "engine" / "assets" / "models").glob("*int8*.onnx")) + [
    REPO / "tests" / "assets" / "tiny_int8.onnx"]
CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


def _crops(card, per_class: int = 2) -> np.ndarray:
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    files = [f for cls in CLASSES for f in pbc_files(cls, per_class)]
    pipeline = CropPipeline(PipelineSpec.from_preprocessing(card.preprocessing, batch_size=len(files)))
    batch, errors = pipeline.decode_to_numpy([f.read_bytes() for f in files])
    assert not any(errors)
    return batch


def _session(model, optimized: Path | None = None):
    options = session_options()  # exact int8 on any x86 CPU, as the engine's own sessions
    options.log_severity_level = 3
    if optimized:
        options.optimized_model_filepath = str(optimized)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _run(model, batch) -> list[np.ndarray]:
    return _session(model).run(None, {"image": batch})


@pytest.mark.parametrize("path", SHIPPED_INT8, ids=lambda p: p.name)
def test_every_shipped_int8_model_is_symmetric_int8_with_zero_points_of_zero(path):
    graph = onnx.load(str(path)).graph
    zero_points = [node.input[2] for node in graph.node
                   if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2]
    assert zero_points, f"{path.name} has no Q/DQ nodes"
    assert tensorrt_qdq_problems(graph) == []
    # what TensorRT parses: no int32 DequantizeLinear left
    assert tensorrt_qdq_problems(fold_bias_dequantize(onnx.load(str(path))).graph, allow_int32_bias=False) == []


def test_the_export_writes_tensorrt_ready_int8(trained_run):
    """The export code itself (the fixture ran `bmengine export` here), not only the shipped files."""
    model = onnx.load(str(trained_run))
    assert tensorrt_qdq_problems(model.graph) == []
    assert tensorrt_qdq_problems(model.graph, allow_int32_bias=False)  # biases stay int32 in the file


def _qdq_model(zero_point: np.ndarray):
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    zp = numpy_helper.from_array(zero_point, "zp")
    nodes = [helper.make_node("QuantizeLinear", ["x", "scale", "zp"], ["q"], name="quant"),
             helper.make_node("DequantizeLinear", ["q", "scale", "zp"], ["y"], name="dequant")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [scale, zp])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("zero_point, problem", [
    (np.array(3, np.uint8), "of type uint8"),
    (np.array(5, np.int8), "non-zero"),
])
def test_asymmetric_or_unsigned_zero_points_are_named(zero_point, problem):
    problems = tensorrt_qdq_problems(_qdq_model(zero_point).graph)
    assert [p.node for p in problems] == ["quant", "dequant"]
    assert all(problem in p.problem for p in problems)
    assert tensorrt_qdq_problems(_qdq_model(np.array(0, np.int8)).graph) == []


def test_unsigned_activations_are_the_same_numbers_at_the_saturation_edges():
    x = np.array([-20.0, -12.84, 0.04, 12.7], np.float32)  # saturates low, rounds, saturates high
    model = _qdq_model(np.array(0, np.int8))
    expected = _session(model).run(None, {"x": x})[0]
    assert np.array_equal(_session(unsigned_activations(model)).run(None, {"x": x})[0], expected)
    assert expected.min() == pytest.approx(-12.8) and expected.max() == pytest.approx(12.7)


def test_folded_biases_give_the_same_logits_on_real_crops(tiny_model):
    card = load_card(tiny_model)
    batch = _crops(card)
    model = onnx.load(str(tiny_model))
    folded = fold_bias_dequantize(model)
    assert sum(n.op_type == "DequantizeLinear" for n in folded.graph.node) < \
        sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    assert np.allclose(_run(folded, batch)[0], _run(model, batch)[0], atol=1e-4)


def test_cpu_backend_fuses_every_int8_convolution_and_keeps_the_numbers(tiny_model, tmp_path):
    """ONNX Runtime's own int8 -> uint8 rewrite leaves most convolutions of a branching graph in
    fp32; the backend's rewrite fuses all of them, with the same logits."""
    card = load_card(tiny_model)
    batch = _crops(card)
    model = onnx.load(str(tiny_model))
    convolutions = sum(n.op_type == "Conv" for n in model.graph.node)

    def fused_ops(candidate) -> dict[str, int]:
        optimized = tmp_path / "optimized.onnx"
        _session(candidate, optimized)
        ops: dict[str, int] = {}
        for node in onnx.load(str(optimized)).graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        return ops

    as_written, rewritten = fused_ops(model), fused_ops(unsigned_activations(model))
    assert as_written.get("Conv", 0) > 0  # what the rewrite is for
    assert rewritten.get("Conv", 0) == 0 and rewritten.get("QLinearConv", 0) == convolutions

    from bmengine.engine.backends import load_backend

    logits = load_backend(tiny_model).forward(batch).logits
    assert np.allclose(logits, _run(model, batch)[0], atol=1e-4)
