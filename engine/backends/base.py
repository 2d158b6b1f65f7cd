"""One backend interface for every runtime; the runtime is chosen by the model file's suffix.

A backend takes a preprocessed batch (NCHW float32, on the device it declares) and returns
class probabilities on the host. Everything around it — reading, decoding, writing — is shared.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from bmengine.engine.model.card import ModelCard, ModelCardError


@dataclass(frozen=True)
class BackendOptions:
    threads: int = 2  # CPU runtimes: intra-op threads
    device_id: int = 0  # GPU runtimes
    max_batch_size: int = 64


@dataclass(frozen=True)
class ModelIO:
    """What the model file itself says about its input and output, to check against the card."""

    input_size: int | None  # square spatial size, None when dynamic
    num_classes: int | None


class Backend(ABC):
    name: str = "backend"
    #: where the preprocessing must leave the batch: "cpu" (NumPy) or "gpu" (device memory)
    device: Literal["cpu", "gpu"] = "cpu"

    def __init__(self, model_path: Path, card: ModelCard, options: BackendOptions):
        self.model_path = Path(model_path)
        self.card = card
        self.options = options

    @abstractmethod
    def io(self) -> ModelIO:
        """Input size and class count read from the model file."""

    @abstractmethod
    def infer(self, batch) -> np.ndarray:
        """Class probabilities (N, C) float32 on the host for an NCHW (staged) batch."""

    def stage(self, batch):
        """Take ownership of a freshly decoded batch, in the decode thread, before DALI's next run
        reuses its buffers. Host batches are already private copies; GPU backends copy into one of
        their own input buffers here."""
        return batch

    def close(self) -> None:
        """Free runtime resources (device memory, sessions)."""

    def check_against_card(self) -> None:
        io = self.io()
        n = len(self.card.classes)
        if io.num_classes is not None and io.num_classes != n:
            raise ModelCardError(
                f"{self.model_path}: model outputs {io.num_classes} classes but its card lists {n} "
                f"({', '.join(self.card.classes)})"
            )
        crop = self.card.preprocessing.crop
        if io.input_size is not None and io.input_size != crop:
            raise ModelCardError(f"{self.model_path}: model input is {io.input_size}px but its card says {crop}px")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


_BACKENDS: dict[str, tuple[str, Callable[[], type[Backend]]]] = {}


def register_backend(suffixes: tuple[str, ...], name: str):
    """Register a backend class for model-file suffixes; the class is imported lazily."""

    def decorator(loader: Callable[[], type[Backend]]):
        for suffix in suffixes:
            _BACKENDS[suffix] = (name, loader)
        return loader

    return decorator


def backend_for(model_path: Path) -> tuple[str, Callable[[], type[Backend]]]:
    suffix = Path(model_path).suffix.lower()
    try:
        return _BACKENDS[suffix]
    except KeyError:
        known = ", ".join(sorted(_BACKENDS))
        raise ModelCardError(f"{model_path}: no backend runs '{suffix}' files (known: {known})") from None


def known_backends() -> dict[str, str]:
    """suffix -> backend name."""
    return {suffix: name for suffix, (name, _) in _BACKENDS.items()}
