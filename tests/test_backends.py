"""Every backend behind one interface: ONNX Runtime vs PyTorch parity; TensorRT skips without a GPU."""

import shutil

import numpy as np
import pytest

from bmengine.engine.backends import known_backends, load_backend
from bmengine.engine.evaluate import predict_files
from bmengine.engine.model import load_card, sha256_of, write_card
from conftest import pbc_files


def test_suffixes_map_to_backends():
    assert known_backends()[".onnx"] == "onnxruntime"
    assert known_backends()[".plan"] == "tensorrt"
    assert known_backends()[".pt"] == "torch"


def test_int8_agrees_with_fp32_on_real_crops(tiny_model):
    """The test model is trained (mean top probability > 0.8), so a wrong int8 model shows. On
    64 crops it never saw, measured for the symmetric (TensorRT-ready) int8 export with percentile
    ranges: argmax agrees on 64, max |dp| 0.21 (one crop near a decision boundary), mean |dp|
    0.004 (the asymmetric export before it: 63, 0.041, 0.0009). Bounds: at most 2 flips, max |dp|
    < 0.3, mean |dp| < 0.01. Two swapped class columns give |dp| near 1 and 11-21 flips."""
    classes = load_card(tiny_model).classes
    files = [f for cls in classes for f in pbc_files(cls, 8, offset=40)]
    fp32, _ = predict_files(load_backend(tiny_model.with_name("tiny.onnx")), files)
    int8, errors = predict_files(load_backend(tiny_model), files)
    assert errors == [None] * len(files)
    assert np.allclose(fp32.sum(axis=1), 1, atol=1e-4) and np.allclose(int8.sum(axis=1), 1, atol=1e-4)
    assert fp32.max(axis=1).mean() > 0.8, "the test model is near-uniform: int8 errors would not show"
    assert (fp32.argmax(axis=1) != int8.argmax(axis=1)).sum() <= 2
    assert np.abs(fp32 - int8).max() < 0.3 and np.abs(fp32 - int8).mean() < 0.01


def test_torch_backend_matches_onnx_runtime(trained_run, tmp_path):
    torch = pytest.importorskip("torch", reason="the torch backend needs the [train] extra")
    run = trained_run.parent.parent  # a checkpoint: trained in this session
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    pt = tmp_path / "tiny.pt"
    torch.save({"model_spec": state["model_spec"], "model": state["model"]}, pt)
    card = load_card(trained_run.with_name("tiny.onnx"))
    card.weights_file, card.weights_sha256 = pt.name, sha256_of(pt)
    write_card(card, pt)
    files = pbc_files("eosinophil", 6, offset=40)
    onnx_probs, _ = predict_files(load_backend(trained_run.with_name("tiny.onnx")), files)
    torch_probs, _ = predict_files(load_backend(pt), files)
    assert np.abs(onnx_probs - torch_probs).max() < 1e-3


def test_tensorrt_backend_needs_tensorrt(tiny_model, tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        plan = tmp_path / "tiny.plan"
        shutil.copy(tiny_model, plan)
        card = load_card(tiny_model)
        card.weights_file, card.weights_sha256 = plan.name, sha256_of(plan)
        write_card(card, plan)
        from bmengine.engine.model import ModelCardError

        with pytest.raises(ModelCardError, match="TensorRT is not installed"):
            load_backend(plan)
    else:
        pytest.skip("TensorRT is installed: the GPU tests cover the real engine")


def test_without_a_batch_size_each_runtime_picks_its_own(tiny_model, tmp_path):
    """`run`/`eval`/`bench` without --batch-size: ONNX Runtime on a CPU takes its small batch; a
    TensorRT plan takes the batch its optimisation profile was tuned for (the card compile wrote)."""
    from bmengine.engine.backends import default_batch_size
    from bmengine.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from bmengine.engine.backends.tensorrt_backend import TensorRTBackend

    assert default_batch_size(tiny_model) == OnnxRuntimeBackend.default_batch_size < 64
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"not a real engine: only its card is read")
    card = load_card(tiny_model)
    card.architecture = {**card.architecture, "tensorrt": {"opt_batch": 384, "max_batch": 512}}
    card.weights_file, card.weights_sha256 = plan.name, sha256_of(plan)
    write_card(card, plan)
    assert default_batch_size(plan) == 384
    card.architecture = {k: v for k, v in card.architecture.items() if k != "tensorrt"}
    write_card(card, plan)
    assert default_batch_size(plan) == TensorRTBackend.default_batch_size
