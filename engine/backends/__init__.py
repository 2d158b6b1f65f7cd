"""Inference backends, chosen by the model file's suffix. Importing one never needs another's runtime."""

from bmengine.engine.backends.base import (
    Backend,
    BackendOptions,
    Inference,
    ModelIO,
    Outputs,
    backend_for,
    known_backends,
    register_backend,
)


@register_backend((".onnx",), "onnxruntime")
def _onnxruntime():
    from bmengine.engine.backends.onnxruntime_backend import OnnxRuntimeBackend

    return OnnxRuntimeBackend


@register_backend((".plan", ".engine", ".trt"), "tensorrt")
def _tensorrt():
    from bmengine.engine.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend


@register_backend((".pt", ".pth"), "torch")
def _torch():
    from bmengine.engine.backends.torch_backend import TorchBackend

    return TorchBackend


def default_batch_size(model_path) -> int:
    """Crops per batch for this model when the user names none: its runtime's choice (16 on
    ONNX Runtime on a CPU; a TensorRT plan's tuned batch)."""
    from bmengine.engine.model.card import load_card

    _, loader = backend_for(model_path)
    return loader().preferred_batch_size(load_card(model_path))


def load_backend(model_path, options: BackendOptions | None = None) -> Backend:
    """Load a model with its card, pick the runtime, and refuse any disagreement between them."""
    from bmengine.engine.model.card import load_card

    card = load_card(model_path)
    _, loader = backend_for(model_path)
    backend = loader()(model_path, card, options or BackendOptions())
    backend.check_against_card()
    return backend


__all__ = ["Backend", "BackendOptions", "Inference", "ModelIO", "Outputs", "backend_for", "default_batch_size",
           "known_backends", "load_backend", "register_backend"]
