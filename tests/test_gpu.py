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
def test_tensorrt_engine_matches_onnx_runtime(tiny_model, tmp_path):
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import predict_files
    from bmengine.training.compile_tensorrt import CompileConfig, compile_engine

    fp32 = tiny_model.with_name("tiny.onnx")
    plan = compile_engine(CompileConfig(fp32, tmp_path / "tiny.plan", fp16=False, max_batch=64, opt_batch=32))
    files = [f for cls in ("lymphocyte", "monocyte") for f in pbc_files(cls, 16, offset=40)]
    expected, _ = predict_files(load_backend(fp32), files)
    got, errors = predict_files(load_backend(plan), files)
    assert errors == [None] * len(files)
    assert np.abs(expected - got).max() < 1e-2
