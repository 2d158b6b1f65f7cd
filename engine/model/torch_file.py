"""Read a PyTorch file as data, never as code: the one place bmengine calls ``torch.load``.

A ``.pt`` is a pickle, and a full unpickle runs whatever callables the file names, so a model file
someone sends could run code on load. torch's ``weights_only`` unpickler builds tensors, dicts,
lists, tuples, str, numbers and None only; anything else is refused here with a clear error. The
torch backend and every training loader (export, explain, ablation, resume) go through it.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

from bmengine.engine.model.card import ModelCardError


class UnsafeModelFileError(ModelCardError):
    """A PyTorch file that is not plain data: unreadable, or holding Python objects we will not build."""


def load_plain_data(path: Path, noun: str = "file"):
    """What ``path`` holds, read with ``weights_only=True``; ``noun`` names it in messages."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeModelFileError(
            f"{path}: refused: the {noun} is not only tensors and plain data ({_reason(exc)}); "
            "bmengine never unpickles a model file. If an older bmengine wrote it, re-train or "
            "re-export it; otherwise do not trust it"
        ) from None
    except OSError:
        raise
    except Exception as exc:  # torch reports a damaged or foreign file as KeyError, RuntimeError, EOFError...
        raise UnsafeModelFileError(f"{path}: not a readable PyTorch {noun} "
                                   f"({type(exc).__name__}: {_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    """torch's message runs to a page of advice on how to unpickle anyway; keep only the reason."""
    text = str(exc)
    if found := re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", text):
        return found.group(0)
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
