"""GPU path: DALI "mixed" decoding and TensorRT engines, checked against the CPU path.

These need an NVIDIA GPU (and TensorRT for the engine tests); elsewhere they skip, saying why.
"""

import importlib.util
import json
import sys
import shutil
from pathlib import Path

import numpy as np
import pytest

from bmengine.engine.doctor import check
from conftest import pbc_files

_checks = {name: check(name) for name in ("cuda", "tensorrt", "torch-tensorrt")}
needs_gpu = pytest.mark.skipif(not _checks["cuda"].ok, reason=f"no CUDA GPU here ({_checks['cuda'].detail})")
needs_tensorrt = pytest.mark.skipif(
    not (_checks["cuda"].ok and _checks["tensorrt"].ok), reason="needs a CUDA GPU and TensorRT (the [gpu] extra)"
)
needs_torch_tensorrt = pytest.mark.skipif(
    not (_checks["cuda"].ok and _checks["torch-tensorrt"].ok),
    reason="needs a CUDA GPU and torch-tensorrt with TensorRT (the [gpu] extra)")
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
def test_bmengine_run_with_a_pt_on_cuda_equals_the_run_on_the_cpu(trained_run, tmp_path):
    """`bmengine run` with a `.pt` on CUDA: DALI "mixed" returns each batch on the torch backend's
    stream, which copies it there (DLPack) before DALI's next run reuses the buffer. Against the
    same `.pt` run with CUDA hidden (torch and DALI on the CPU), in 12 batches of 8: every crop's
    probabilities within 2e-2, the sum of the decoders' 1e-2 (test_tensorrt_engine_matches_onnx_runtime)
    and TF32 convolutions; a batch handed another batch's crops would differ by far more."""
    torch = pytest.importorskip("torch", reason="the torch backend needs torch")
    import pandas as pd

    from bmengine.engine.model.card import load_card, sha256_of, write_card
    from cli_helpers import bmengine, crop_folder, ingest

    state = torch.load(trained_run.parents[1] / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    pt = tmp_path / "tiny.pt"
    torch.save({"model_spec": state["model_spec"], "model": state["model"]}, pt)
    card = load_card(trained_run.with_name("tiny.onnx"))
    card.weights_file, card.weights_sha256 = pt.name, sha256_of(pt)
    write_card(card, pt)
    mix = {"lymphocyte": 24, "neutrophil": 24, "eosinophil": 24, "monocyte": 24}
    ingest(crop_folder(tmp_path / "crops", {"s1": mix}, offset=40), tmp_path / "slides")
    for out, env in (("cpu", {"CUDA_VISIBLE_DEVICES": ""}), ("gpu", {})):
        result = bmengine("run", tmp_path / "slides", "--model", pt, "--out", tmp_path / out, "--batch-size", "8", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
    runs = {out: json.loads((tmp_path / out / "run.json").read_text()) for out in ("cpu", "gpu")}
    assert [runs[out]["model"]["device"] for out in ("cpu", "gpu")] == ["cpu", "gpu:0"]
    cpu = pd.read_parquet(tmp_path / "cpu" / "s1" / "cells.parquet")
    gpu = pd.read_parquet(tmp_path / "gpu" / "s1" / "cells.parquet")
    probs = [c for c in cpu.columns if c.startswith("prob_")]
    assert len(gpu) == len(cpu) == sum(mix.values())
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


@needs_tensorrt
def test_fp16_plan_matches_onnx_runtime(tiny_model, tmp_path):
    """The fp16 export (float32 IO; Softmax and LayerNorm fp32) compiled as a strongly typed fp16
    plan, against ONNX Runtime on the fp32 file, crops decoded by each backend's own pipeline
    (nvJPEG vs libjpeg-turbo). Tolerance: max |dp| < 3e-2, at most 1 argmax flip in 32. On the CPU
    the fp16 file moves probabilities by at most 0.0015 (tests/test_fp16_export.py, fp16 storage
    but fp32 arithmetic); TensorRT may also accumulate in fp16, and the decoders add the fp32
    plan's 1e-2 (test_tensorrt_engine_matches_onnx_runtime), so about twice that."""
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import predict_files
    from bmengine.engine.model.card import load_card
    from bmengine.training.compile_tensorrt import CompileConfig, compile_engine
    from bmengine.training.fp16 import write_fp16_bundle

    for name in ("tiny.onnx", "tiny.onnx.card.json"):
        shutil.copy(tiny_model.with_name(name), tmp_path / name)
    fp16 = write_fp16_bundle(tmp_path / "tiny.onnx")
    plan = compile_engine(CompileConfig(fp16, tmp_path / "tiny_fp16.plan", max_batch=64, opt_batch=32))
    card = load_card(plan)
    assert card.precision == "fp16" and card.architecture["tensorrt"]["precision"] == "fp16, strongly typed"
    files = [f for cls in ("lymphocyte", "monocyte") for f in pbc_files(cls, 16, offset=40)]
    expected, _ = predict_files(load_backend(tmp_path / "tiny.onnx"), files)
    got, errors = predict_files(load_backend(plan), files)
    assert errors == [None] * len(files)
    assert (expected.argmax(axis=1) != got.argmax(axis=1)).sum() <= 1
    assert np.abs(expected - got).max() < 3e-2


@needs_torch_tensorrt
def test_torch_tensorrt_plan_matches_the_checkpoint_on_cuda(trained_run, tmp_path):
    """`bmengine compile CKPT.pt` (torch-tensorrt, no ONNX) against the same checkpoint run by the
    torch backend, which runs on CUDA here: raw logits within 1e-2 of their scale (TF32 rounds
    the mantissa to 10 bits, as for the ONNX route's fp32 plans). The plan has no OOD score."""
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import score_files
    from bmengine.engine.model.card import load_card, write_card
    from bmengine.training.compile_torch_tensorrt import checkpoint_model
    from cli_helpers import bmengine

    checkpoint = trained_run.parents[1] / "checkpoints" / "last.pt"
    result = bmengine("compile", checkpoint, "--out", tmp_path / "ckpt.plan", "--max-batch", "64", "--opt-batch", "32")
    assert result.returncode == 0, result.stderr
    plan = tmp_path / "ckpt.plan"
    card = load_card(plan)
    assert card.ood == {} and card.architecture["compiled_from"]["route"] == "torch-tensorrt"
    pt = tmp_path / "last.pt"  # the torch backend's bundle: the checkpoint with the card it implies
    shutil.copy(checkpoint, pt)
    _, pt_card = checkpoint_model(checkpoint)
    write_card(pt_card, pt)
    torch_backend, plan_backend = load_backend(pt), load_backend(plan)
    assert torch_backend.device == "gpu" and str(torch_backend.torch_device) == "cuda:0"
    files = [f for cls in ("eosinophil", "neutrophil") for f in pbc_files(cls, 16, offset=40)]
    expected = score_files(torch_backend, files, raw=True)
    got = score_files(plan_backend, files, raw=True)
    assert got.errors == [None] * len(files) and np.isnan(got.ood_score).all()
    scale = max(1.0, float(np.abs(expected.values).max()))
    assert np.abs(expected.values - got.values).max() < 1e-2 * scale


def _decoder_parity():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decoder_parity.py"
    spec = importlib.util.spec_from_file_location("decoder_parity", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@needs_gpu
def test_nvjpeg_and_libjpeg_turbo_give_the_same_qc_verdicts():
    """Issue 13 item 9: the QC image decoded by nvJPEG (DALI "mixed", libjpeg-turbo's chroma
    upsampling switched on) and by libjpeg-turbo (DALI cpu), the checks run on the host on both.

    Tolerance, and why: JPEG leaves IDCT rounding and chroma upsampling to the decoder. With the
    upsampling aligned (DALI's ``jpeg_fancy_upsampling``; DALI issue 3610 names upsampling as the
    main nvJPEG/libjpeg-turbo difference) what remains is rounding, a grey level or two on some
    pixels (libjpeg-turbo issue 489: two builds "mostly within +-2"). So on clean crops: mean |d|
    <= 1 grey level, 99th percentile <= 3, and every verdict the same (the checks' thresholds sit
    5 or more grey levels, or a ratio of 0.5, from the clean crops they were tuned on). On damaged
    crops the decoders may resynchronise differently after the bad bytes, so "caught" (refused or
    flagged, as benchmarks/qc_corpus.py counts it) may differ on at most 1 crop in 12 (four of the
    48 here; first run on a GPU, H100 2026-11-26: three, see below). A JPEG cut short is refused
    before either decoder sees it. benchmarks/decoder_parity.py measures the full corpus and
    re-derives thresholds."""
    from bmengine.engine.qc import damage

    parity = _decoder_parity()
    checks = parity.numeric_checks()
    clean = [f.read_bytes() for cls in ("neutrophil", "lymphocyte", "eosinophil") for f in pbc_files(cls, 16, offset=60)]
    rng = np.random.default_rng(7)
    sources = [f.read_bytes() for f in pbc_files("monocyte", 48, offset=60)]
    kinds = list(damage.DAMAGE_KINDS)
    damaged = [damage.DAMAGE_KINDS[kinds[i % len(kinds)]](data, rng, clean[i]) for i, data in enumerate(sources)]

    cpu, gpu = parity.decode(clean, 144, "cpu"), parity.decode(clean, 144, "gpu")
    record = parity.compare(cpu, gpu, checks)
    assert record["decoded_by_both"] == len(clean)
    assert record["pixels"]["mean_abs"] <= 1.0 and record["pixels"]["p99_abs"] <= 3
    assert record["verdicts"]["agree"] == len(clean), record["verdicts"]["differ"]

    cpu, gpu = parity.decode(damaged, 144, "cpu"), parity.decode(damaged, 144, "gpu")
    by_kind = parity.caught_by_kind(cpu, gpu, [f"{kinds[i % len(kinds)]}:{i}" for i in range(len(damaged))])
    # nvJPEG alone decodes a JPEG cut short (libjpeg-turbo refuses it): the engine refuses it first, on both
    assert by_kind["truncate_cut"]["refused_cpu"] == by_kind["truncate_cut"]["refused_gpu"] == by_kind["truncate_cut"]["n"]
    differ = [name for k in by_kind.values() for name in k["one_decoder_only"]]
    # H100, DALI 2.4: 3 of these 48 in two runs, each caught by libjpeg-turbo only (lost restart markers,
    # a scan cut short with its end marker re-appended: nvJPEG hides the damage better); 3-4 of the
    # corpus's 320 (benchmarks/results/2026-11-26-h100-gpu-path.md), and which ones varies between runs
    assert len(differ) <= len(damaged) // 12, f"{len(differ)} of {len(damaged)} damaged crops caught by one decoder only: {differ}"


@needs_gpu
def test_training_on_cuda_follows_the_cpu_run(pbc_subset, tmp_path):
    """`--device cuda` against `--device cpu`, same seed: augmentation runs on the CPU in both, so the
    same crops, zooms and colours are drawn, and the initial weights are the same. With bf16 off both
    compute in float32 (TF32 off), so the first epoch's losses agree closely; checkpoints come back
    with CPU tensors. The same code trained full-size runs on an H200 (2026-11-26,
    benchmarks/results/2026-11-26-h200-training.md); this test itself has not run on a GPU yet."""
    import torch

    from bmengine.training.trainer import TrainConfig, train

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = TrainConfig(data_dir=str(pbc_subset), run_dir=str(tmp_path / device), backbone="regnetx_002", resize=40,
                          crop=32, batch_size=16, epochs=1, max_steps_per_epoch=4, limit_per_class=8, bf16=False,
                          augment="cross-lab", device=device)
        runs[device] = train(cfg, log=lambda m: None)["history"][0]
    assert runs["cuda"]["device"].startswith("cuda:0 (")
    assert abs(runs["cuda"]["train_loss"] - runs["cpu"]["train_loss"]) < 1e-2 * max(1.0, runs["cpu"]["train_loss"])
    state = torch.load(tmp_path / "cuda" / "checkpoints" / "last.pt", weights_only=True)
    assert all(v.device.type == "cpu" for v in state["model"].values())
