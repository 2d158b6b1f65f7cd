"""GPU path: DALI "mixed" decoding and TensorRT engines, checked against the CPU path.

These need an NVIDIA GPU (and TensorRT for the engine tests); elsewhere they skip, saying why.
"""

import numpy as np
import pytest

from bmengine.engine.doctor import check
from conftest import pbc_files

_checks = {name: check(name) for name in ("cuda", "tensorrt")}
needs_gpu = pytest.mark.skipif(not _checks["cuda"].ok, reason=f"no CUDA GPU here ({_checks['cuda'].detail})")
needs_tensorrt = pytest.mark.skipif(
    not (_checks["cuda"].ok and _checks["tensorrt"].ok), reason="needs a CUDA GPU and TensorRT (the [gpu] extra)"
)
pytestmark = pytest.mark.gpu


@needs_gpu
def test_gpu_pipeline_matches_cpu_pipeline():
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    crops = [f.read_bytes() for f in pbc_files("neutrophil", 16)]
    spec = dict(resize=128, crop=112, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), batch_size=16)
    cpu, _ = CropPipeline(PipelineSpec(**spec)).decode_to_numpy(crops)
    gpu, errors = CropPipeline(PipelineSpec(device="gpu", **spec)).decode_to_numpy(crops)
    assert errors == [None] * 16
    # nvJPEG and libjpeg-turbo differ in IDCT rounding: small per-pixel noise only
    assert np.abs(cpu - gpu).mean() < 0.02


@needs_tensorrt
@pytest.mark.parametrize("name, tolerance", [("tiny.onnx", 1e-2), ("tiny_int8.onnx", 3e-2)])
def test_tensorrt_engine_matches_onnx_runtime(tiny_model, tmp_path, name, tolerance):
    """fp32 (TF32 allowed) and int8 Q/DQ plans against ONNX Runtime on the same file: probabilities
    within ``tolerance`` (TF32 rounds the mantissa to 10 bits; int8 kernels differ in rounding)."""
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import predict_files
    from bmengine.training.compile_tensorrt import CompileConfig, compile_engine

    onnx_file = tiny_model.with_name(name)
    plan = compile_engine(CompileConfig(onnx_file, tmp_path / "tiny.plan", max_batch=64, opt_batch=32))
    files = [f for cls in ("lymphocyte", "monocyte") for f in pbc_files(cls, 16, offset=40)]
    expected, _ = predict_files(load_backend(onnx_file), files)
    got, errors = predict_files(load_backend(plan), files)
    assert errors == [None] * len(files)
    assert np.abs(expected - got).max() < tolerance


@needs_tensorrt
def test_bmengine_run_with_a_plan_equals_the_onnx_run_through_the_ring(tiny_model, tmp_path):
    """A full `bmengine run` with a .plan, in batches of 8: 12 batches pass through the ring of
    RING input slots while the decode thread runs ahead. A slot overwritten before its inference
    would hand one batch another batch's crops: every crop's probabilities must match ONNX Runtime's."""
    import pandas as pd

    from bmengine.engine.backends.tensorrt_backend import RING
    from cli_helpers import bmengine, crop_folder, ingest
    from bmengine.training.compile_tensorrt import CompileConfig, compile_engine

    onnx_file = tiny_model.with_name("tiny.onnx")
    plan = compile_engine(CompileConfig(onnx_file, tmp_path / "tiny.plan", max_batch=8, opt_batch=8))
    mix = {"lymphocyte": 24, "neutrophil": 24, "eosinophil": 24, "platelet": 24}
    assert sum(mix.values()) // 8 > 2 * RING
    ingest(crop_folder(tmp_path / "crops", {"s1": mix}), tmp_path / "slides")
    for model, out in ((onnx_file, "cpu"), (plan, "gpu")):
        result = bmengine("run", tmp_path / "slides", "--model", model, "--out", tmp_path / out, "--batch-size", "8")
        assert result.returncode == 0, result.stdout + result.stderr
    cpu = pd.read_parquet(tmp_path / "cpu" / "s1" / "cells.parquet")
    gpu = pd.read_parquet(tmp_path / "gpu" / "s1" / "cells.parquet")
    probs = [c for c in cpu.columns if c.startswith("prob_")]
    assert np.abs(cpu[probs].to_numpy() - gpu[probs].to_numpy()).max() < 2e-2


@needs_gpu
def test_qc_computed_on_the_gpu_gives_the_cpu_verdicts():
    """The compiled Triton kernel on the GPU's own QC images against the CPU checks on the CPU
    pipeline's: same flags on clean and damaged crops (nvJPEG may differ by a grey level or so)."""
    pytest.importorskip("triton", reason="needs Triton (the [gpu] extra)")
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec
    from bmengine.engine.qc import QcStats, quality_flags
    from bmengine.engine.qc.damage import shifted_blocks, truncate_grey

    clean = [f.read_bytes() for f in pbc_files("neutrophil", 12, offset=40)]
    rng = np.random.default_rng(3)
    crops = clean + [truncate_grey(clean[0], rng), shifted_blocks(clean[1], rng)]
    spec = dict(resize=144, crop=128, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                batch_size=len(crops), qc_output=True)
    cpu = CropPipeline(PipelineSpec(**spec)).decode(crops)
    gpu = CropPipeline(PipelineSpec(device="gpu", **spec)).decode(crops)
    assert isinstance(gpu.qc, QcStats), "the QC images were copied to the host instead"
    assert quality_flags(gpu.qc, gpu.shapes) == quality_flags(cpu.qc, cpu.shapes)
