"""The GPU path's checks that run without a GPU (issue 13): plan identity, what compile refuses,
and the clear errors where TensorRT or cuda-python is missing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bmengine.engine.backends.tensorrt_backend import RING, plan_mismatch
from bmengine.engine.pipeline.stages import DECODE_AHEAD
from cli_helpers import bmengine

onnx = pytest.importorskip("onnx")


def test_a_plan_from_another_gpu_or_tensorrt_is_named_both_ways():
    built = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "version": "10.13.0"}
    assert plan_mismatch(built, dict(built)) is None
    why = plan_mismatch(built, {**built, "gpu": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"})
    assert "'NVIDIA H100 80GB HBM3' (this machine: 'NVIDIA A100-SXM4-40GB')" in why and "compute capability" in why
    assert "TensorRT '10.13.0' (this machine: '11.0.0')" in plan_mismatch(built, {**built, "version": "11.0.0"})


def test_the_ring_covers_every_batch_the_decode_thread_can_hold():
    assert RING == DECODE_AHEAD + 2  # queued + being staged + being inferred


def test_compile_prepares_the_int8_export_and_refuses_what_tensorrt_cannot_take(tiny_model, tmp_path):
    from bmengine.engine.model.qdq import tensorrt_qdq_problems
    from bmengine.training.compile_tensorrt import CompileError, prepared_onnx

    graph, precision = prepared_onnx(tiny_model, "int8")
    assert tensorrt_qdq_problems(onnx.load_from_string(graph).graph, allow_int32_bias=False) == []
    assert precision.startswith("int8")
    assert prepared_onnx(tiny_model.with_name("tiny.onnx"), "fp32")[1] == "fp32, TF32 allowed"
    with pytest.raises(CompileError, match="says fp16 but no float16 weights"):  # fp16: tests/test_fp16_export.py
        prepared_onnx(tiny_model.with_name("tiny.onnx"), "fp16")

    model = onnx.load(str(tiny_model))  # an int8 file from before the symmetric export
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    zero_point = next(i for i in model.graph.initializer if i.name == q.input[2])
    zero_point.CopyFrom(onnx.numpy_helper.from_array(np.array(7, np.int8), zero_point.name))
    old = tmp_path / "old_int8.onnx"
    onnx.save(model, str(old))
    with pytest.raises(CompileError, match="TensorRT cannot take.*re-export"):
        prepared_onnx(old, "int8")


def test_compile_and_plan_models_say_what_is_missing(tiny_model, tmp_path):
    result = bmengine("compile", tiny_model, "--out", tmp_path / "m.plan")
    assert result.returncode == 2
    assert "TensorRT is not installed" in result.stderr and "[gpu]" in result.stderr
    assert not (tmp_path / "m.plan").exists()

    plan = tmp_path / "fake.plan"  # a .plan bundle on a machine without TensorRT
    plan.write_bytes(b"not an engine")
    card = json.loads(tiny_model.with_name(tiny_model.name + ".card.json").read_text())
    from bmengine.engine.model.card import sha256_of

    card.update(weights_file=plan.name, weights_sha256=sha256_of(plan))
    plan.with_name("fake.plan.card.json").write_text(json.dumps(card))
    shutil.copy(tiny_model, tmp_path / "tiny_int8.onnx")
    from bmengine.engine.backends import load_backend
    from bmengine.engine.model.card import ModelCardError

    with pytest.raises(ModelCardError, match="TensorRT is not installed.*run the model's .onnx"):
        load_backend(plan)
