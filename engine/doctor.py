"""What can this machine run? Each check returns (ok, detail); none of them raises."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def _tiny_jpeg() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 160)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _dali_cpu() -> str:
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    pipe = CropPipeline(PipelineSpec(32, 24, (0.5,) * 3, (0.5,) * 3, batch_size=1, num_threads=1))
    decoded = pipe.decode([_tiny_jpeg()])
    if not decoded.good:
        raise RuntimeError(decoded.errors[0])
    return f"decoded a JPEG to {tuple(decoded.pixels.shape)}"


def _cuda_gpus() -> str:
    from cuda.bindings import runtime as cudart

    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise RuntimeError("no CUDA device visible")
    return f"{count} CUDA device(s)"


def _dali_gpu() -> str:
    _cuda_gpus()
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    pipe = CropPipeline(PipelineSpec(32, 24, (0.5,) * 3, (0.5,) * 3, device="gpu", batch_size=1, num_threads=1))
    decoded = pipe.decode([_tiny_jpeg()])
    if not decoded.good:
        raise RuntimeError(decoded.errors[0])
    return "nvJPEG decode on the GPU works"


def _version(module: str) -> Callable[[], str]:
    def check() -> str:
        mod = __import__(module)
        return f"{module} {getattr(mod, '__version__', '?')}"

    return check


def _onnxruntime() -> str:
    import onnxruntime as ort

    from bmengine.engine.backends.x86_int8 import int8_dot_product

    vnni = int8_dot_product()
    int8 = {"none": "no VNNI: int8 runs ONNX Runtime's exact, slower kernels",
            "unknown": "VNNI unknown: int8 runs ONNX Runtime's exact kernels"}.get(vnni, f"int8 exact with {vnni}")
    return f"{ort.__version__}, providers: {', '.join(ort.get_available_providers())}; {int8}"


def _default_model() -> str:
    from bmengine.engine.assets import DEFAULT_MODEL
    from bmengine.engine.model.card import load_card

    card = load_card(DEFAULT_MODEL)
    return f"{DEFAULT_MODEL.name}: {card.name}, {len(card.classes)} classes, sha256 {card.weights_sha256[:12]}…"


def _finetune_checkpoint() -> str:
    """The shipped default's half-precision checkpoint: a wheel leaves it out, a clone has it."""
    from bmengine.engine.assets import DEFAULT_MODEL
    from bmengine.engine.model.card import load_card, named_file_problem

    record = load_card(DEFAULT_MODEL).training["checkpoint"]["beside_model"]
    path = DEFAULT_MODEL.parent / record["file"]
    if problem := named_file_problem(path, record["sha256"]):
        hint = "" if path.is_file() else " (an install from a wheel leaves it out: use a clone)"
        raise FileNotFoundError(problem + hint)
    return f"{path.name}, {path.stat().st_size / 2**20:.0f} MiB, sha256 as in the card"


def _triton() -> str:
    import triton

    from bmengine.kernels import KERNELS

    mode = "interpreter (TRITON_INTERPRET=1)" if os.environ.get("TRITON_INTERPRET") == "1" else "compiled (needs a GPU)"
    return f"triton {triton.__version__}, {mode}; kernels: {', '.join(KERNELS)}"


def _torch() -> str:
    import torch

    cuda = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "no CUDA device"
    return f"torch {torch.__version__}, {cuda}"


def _torch_tensorrt() -> str:
    """Its import needs TensorRT's libraries as well as the package (an OSError without them)."""
    import tensorrt
    import torch_tensorrt

    return f"torch-tensorrt {torch_tensorrt.__version__}, TensorRT {tensorrt.__version__}"


CHECKS: dict[str, tuple[str, Callable[[], str]]] = {
    "onnxruntime": ("ONNX models (.onnx) on the CPU", _onnxruntime),
    "dali-cpu": ("DALI decode/resize/normalise on the CPU", _dali_cpu),
    "default-model": ("shipped default model and its card", _default_model),
    "finetune-checkpoint": ("`bmengine finetune` of the shipped default (its weights beside it)",
                            _finetune_checkpoint),
    "cuda": ("a CUDA GPU", _cuda_gpus),
    "dali-gpu": ("DALI on the GPU (nvJPEG)", _dali_gpu),
    "tensorrt": ("TensorRT engines (.plan), [gpu] extra", _version("tensorrt")),
    "torch-tensorrt": ("`bmengine compile CKPT.pt` (checkpoint -> .plan without ONNX), [gpu] extra", _torch_tensorrt),
    "torch": ("training, .pt models and the kernels' tensors, [train] or [gpu] extra", _torch),
    "timm": ("backbones for training, [train] extra", _version("timm")),
    "triton": ("Triton kernels (bmengine.kernels), [gpu] extra", _triton),
}


def check(name: str) -> Check:
    what, probe = CHECKS[name]
    try:
        return Check(f"{name}: {what}", True, probe())
    except Exception as exc:  # a doctor reports; it never crashes
        first_line = str(exc).splitlines()[0][:160] if str(exc) else ""
        return Check(f"{name}: {what}", False, f"{type(exc).__name__}: {first_line}")


def run_checks() -> list[Check]:
    return [check(name) for name in CHECKS]
