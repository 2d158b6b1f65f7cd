"""One backend interface for every runtime; the runtime is chosen by the model file's suffix.

A backend takes a preprocessed batch (NCHW float32, on the device it declares) and returns
class probabilities, and the model's out-of-distribution score where it has one, on the host.
Everything around it — reading, decoding, writing — is shared.

Each runtime implements only :meth:`Backend.forward` (raw logits + the graph's OOD output); the
base class turns logits into probabilities with the card's temperature, softmax(logits / T), and
the OOD output into the score the card's threshold applies to (backends/ood_score.py), so no
backend can forget either.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import numpy as np

from bmengine.engine.backends.ood_score import score_for_card
from bmengine.engine.model.card import ModelCard, ModelCardError


@dataclass(frozen=True)
class BackendOptions:
    threads: int = 2  # CPU runtimes: ONNX Runtime splits each batch into this many single-threaded runs
    device_id: int = 0  # GPU runtimes
    max_batch_size: int = 64


@dataclass(frozen=True)
class ModelIO:
    """What the model file itself says about its input and output, to check against the card."""

    input_size: int | None  # square spatial size, None when dynamic
    num_classes: int | None
    outputs: tuple[str, ...] | None = None  # names of the model's outputs, None when the runtime cannot say


class Outputs(NamedTuple):
    """What a runtime computes for a batch, before calibration."""

    logits: np.ndarray  # (N, C) float32, host
    ood_score: np.ndarray | None  # (N,) float32, host; None when the model (or its card) has no OOD output


class Inference(NamedTuple):
    """What :meth:`Backend.infer` returns: calibrated probabilities, and the OOD score if any."""

    probs: np.ndarray  # (N, C) float32: softmax(logits / card temperature)
    ood_score: np.ndarray | None  # (N,) float32, higher = further from every training class; or None


class Backend(ABC):
    name: str = "backend"
    #: where the preprocessing must leave the batch: "cpu" (NumPy) or "gpu" (device memory)
    device: Literal["cpu", "gpu"] = "cpu"

    #: crops per batch when the user names none (``bmengine run/eval/bench`` without --batch-size)
    default_batch_size: int = 64

    @classmethod
    def preferred_batch_size(cls, card: ModelCard) -> int:
        """The batch this runtime runs a model fastest at, as far as the card tells."""
        return cls.default_batch_size

    def __init__(self, model_path: Path, card: ModelCard, options: BackendOptions):
        self.model_path = Path(model_path)
        self.card = card
        self.options = options

    @abstractmethod
    def io(self) -> ModelIO:
        """Input size and class count read from the model file."""

    @abstractmethod
    def forward(self, batch) -> Outputs:
        """Raw logits (N, C) and, when the card names an OOD output (``card.ood_output``), that
        output (N,), on the host, for an NCHW (staged) batch."""

    def infer(self, batch) -> Inference:
        """Class probabilities (N, C) float32 on the host, calibrated with the card's temperature,
        and the OOD score (N,) or None. Runtimes implement :meth:`forward`, never this."""
        logits, ood = self.forward(batch)
        return Inference(softmax(logits, self.card.temperature), score_for_card(self.card.ood, ood, logits))

    def stage(self, batch):
        """Take ownership of a freshly decoded batch, in the decode thread, before DALI's next run
        reuses its buffers. Host batches are already private copies; GPU backends copy into one of
        their own input buffers here."""
        return batch

    def close(self) -> None:
        """Free runtime resources (device memory, sessions)."""

    def runtime_info(self) -> dict:
        """How this runtime computes, for run.json beside the backend's name and device (empty when
        there is nothing a reader needs to know)."""
        return {}

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
        wanted = self.card.ood_output
        if wanted is not None and io.outputs is not None and wanted not in io.outputs:
            raise ModelCardError(f"{self.model_path}: its card's ood.output {wanted!r} is not an output of the model "
                                 f"(outputs: {', '.join(io.outputs)})")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float32)
    if temperature != 1.0:
        logits = logits / np.float32(temperature)
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
