"""`bmengine compile` has two routes to a .plan (issue 13 item 8): the exported .onnx (TensorRT's
parser) and a checkpoint .pt (torch-tensorrt). What runs without a GPU: the dispatch, the clear
errors, the checkpoint's model as torch-tensorrt's tracer will see it, and the torch backend's
device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bmengine.engine.model import load_card, sha256_of, write_card
from cli_helpers import bmengine

torch = pytest.importorskip("torch", reason="checkpoints need the [train] extra")


def _torch_tensorrt_importable() -> bool:
    try:
        import torch_tensorrt  # noqa: F401
    except Exception:  # ImportError without the package, OSError without TensorRT's libraries
        return False
    return True


@pytest.fixture(scope="module")
def pt_bundle(tiny_model, tmp_path_factory) -> Path:
    """A .pt with its card, as the torch backend runs one: the test model's architecture (from its
    card) with fresh weights, saved as a bare state dict."""
    from bmengine.engine.backends.torch_backend import spec_from_card
    from bmengine.engine.model.networks import create_model

    folder = tmp_path_factory.mktemp("pt")
    card = load_card(tiny_model.with_name("tiny.onnx"))
    torch.manual_seed(0)
    model = create_model(spec_from_card(card, tiny_model)).eval()
    pt = folder / "tiny.pt"
    torch.save(model.state_dict(), pt)
    card.weights_file, card.weights_sha256 = pt.name, sha256_of(pt)
    write_card(card, pt)
    return pt


def test_the_source_suffix_picks_the_route():
    from bmengine.engine.cli.compile_cmd import ROUTES, route_for
    from bmengine.training.compile_tensorrt import CompileError, compile_engine
    from bmengine.training.compile_torch_tensorrt import compile_checkpoint

    assert route_for(Path("m.onnx")).name == "onnx"
    assert route_for(Path("RUN/checkpoints/best.pt")).name == "torch-tensorrt"
    assert route_for(Path("M.PTH")).name == "torch-tensorrt"
    assert ROUTES[".onnx"].load() is compile_engine
    assert ROUTES[".pt"].load() is compile_checkpoint
    with pytest.raises(CompileError, match=r"cannot compile '\.h5' files.*\.onnx \(onnx\).*\.pt \(torch-tensorrt\)"):
        route_for(Path("m.h5"))


def test_compiling_a_checkpoint_without_torch_tensorrt_says_which_extra(pt_bundle, tmp_path):
    if _torch_tensorrt_importable():
        pytest.skip("torch-tensorrt is usable here: tests/test_gpu.py compiles a checkpoint")
    result = bmengine("compile", pt_bundle, "--out", tmp_path / "m.plan")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "torch-tensorrt is not usable here" in result.stderr
    assert "pip install 'bmengine[gpu]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "m.plan").exists()


def test_compile_refuses_an_unknown_source_with_exit_2(tmp_path):
    source = tmp_path / "model.h5"
    source.write_bytes(b"keras")
    result = bmengine("compile", source, "--out", tmp_path / "m.plan")
    assert result.returncode == 2 and "cannot compile '.h5' files" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_checkpoint_model_exports_with_a_dynamic_batch_as_torch_tensorrt_traces_it(pt_bundle):
    """torch_tensorrt.dynamo.trace (2.14, dynamo/_tracer.py) is torch.export.export with the batch
    axis a Dim between the Input's min and max shapes: the model must export so (no graph break,
    no specialised batch) and the exported program must compute what the model does."""
    from torch.export import Dim

    from bmengine.training.compile_torch_tensorrt import checkpoint_model

    model, card = checkpoint_model(pt_bundle)
    size = card.preprocessing.crop
    example = torch.zeros(4, 3, size, size)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: Dim("batch", min=1, max=512)},),
                                  strict=False)
    batch = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        assert torch.allclose(program.module()(batch), model(batch), atol=1e-4)


def test_a_trainer_checkpoint_without_a_card_gets_its_card_from_the_checkpoint(trained_run):
    """RUN/checkpoints/last.pt has no card beside it: classes, taxonomy, preprocessing and
    architecture come from its own plain-data record."""
    from bmengine.training.compile_torch_tensorrt import checkpoint_model

    onnx_card = load_card(trained_run.with_name("tiny.onnx"))
    model, card = checkpoint_model(trained_run.parents[1] / "checkpoints" / "last.pt")
    assert card.classes == onnx_card.classes and card.taxonomy == onnx_card.taxonomy
    assert card.preprocessing == onnx_card.preprocessing
    assert card.architecture["backbone"] == onnx_card.architecture["backbone"] and card.precision == "fp32"
    assert not card.ood and not model.training


def test_the_torch_backend_reports_its_device(pt_bundle):
    from bmengine.engine.backends import load_backend

    backend = load_backend(pt_bundle)
    if torch.cuda.is_available():
        assert backend.device == "gpu" and backend.input_stream is not None
    else:
        assert backend.device == "cpu" and backend.input_stream is None
        assert backend.torch_device == torch.device("cpu")


def test_doctor_reports_torch_tensorrt():
    from bmengine.engine.doctor import check

    found = check("torch-tensorrt")
    assert "torch-tensorrt" in found.name and "CKPT.pt" in found.name
    assert found.ok == _torch_tensorrt_importable()
    if not found.ok:
        assert found.detail  # why: the package or TensorRT's libraries are missing


def test_the_gpu_extra_pins_torch_tensorrt_to_the_torch_it_pins():
    """torch-tensorrt 2.14.x requires torch >=2.14,<2.15 (its wheel's metadata): the [gpu] extra
    pins torch 2.14.1, so the two ranges must meet."""
    tomllib = pytest.importorskip("tomllib")
    root = Path(__file__).resolve().parents[1]
    gpu = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    assert "torch-tensorrt>=2.14,<2.15" in gpu and "torch==2.14.1" in gpu
