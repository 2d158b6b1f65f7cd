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


def load_backend(model_path, options: BackendOptions | None = None) -> Backend:
    """Load a model with its card, pick the runtime, and refuse any disagreement between them."""
    from bmengine.engine.model.card import load_card

    card = load_card(model_path)
    _, loader = backend_for(model_path)
    backend = loader()(model_path, card, options or BackendOptions())
    backend.check_against_card()
    return backend


__all__ = ["Backend", "BackendOptions", "Inference", "ModelIO", "Outputs", "backend_for", "known_backends", "load_backend", "register_backend"]
