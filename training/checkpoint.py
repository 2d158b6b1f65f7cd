"""Read trainer checkpoints as data, never as code.

A ``.pt`` is a pickle, and a full unpickle runs whatever callables the file names, so a checkpoint
someone sends us could run code on load. Every checkpoint is read with torch's ``weights_only``
unpickler (tensors, dicts, lists, tuples, str, numbers, None only); anything else is refused with a
clear error. The trainer writes only those plain types (``training/trainer.py``).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch


class UnsafeCheckpointError(ValueError):
    """A checkpoint that is not plain data: unreadable, or holding Python objects we will not build."""


#: what every trainer checkpoint holds; callers name further keys they need
MODEL_KEYS = ("model", "model_spec")


def load_checkpoint(path: Path, require: tuple[str, ...] = MODEL_KEYS) -> dict:
    """The checkpoint's dict, read with ``weights_only=True``; refuses objects and missing keys."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"{path}: refused: the checkpoint is not only tensors and plain data ({_reason(exc)}); "
            "bmengine never unpickles a model file. If an older bmengine wrote it, re-train or "
            "re-export it; otherwise do not trust it"
        ) from None
    except OSError:
        raise
    except Exception as exc:  # torch reports a damaged or foreign file as KeyError, RuntimeError, EOFError...
        reason = f"{type(exc).__name__}: {_reason(exc)}"
        raise UnsafeCheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(state, dict):
        raise UnsafeCheckpointError(f"{path}: not a trainer checkpoint (holds a {type(state).__name__}, not a dict)")
    if missing := [key for key in require if key not in state]:
        raise UnsafeCheckpointError(f"{path}: not a trainer checkpoint (lacks {', '.join(missing)})")
    return state


def load_model(path: Path, require: tuple[str, ...] = MODEL_KEYS) -> tuple[torch.nn.Module, dict]:
    """The model a checkpoint describes, in eval mode, with its weights; and the checkpoint itself."""
    from bmengine.training.models import ModelSpec, create_model

    state = load_checkpoint(path, tuple(dict.fromkeys(MODEL_KEYS + require)))
    model = create_model(ModelSpec(**state["model_spec"])).eval()
    model.load_state_dict(state["model"])
    return model, state


def _reason(exc: BaseException) -> str:
    """torch's message runs to a page of advice on how to unpickle anyway; keep only the reason."""
    text = str(exc)
    if found := re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", text):
        return found.group(0)
    return next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
