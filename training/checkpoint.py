"""Read trainer checkpoints as data, never as code.

A ``.pt`` is a pickle, and a full unpickle runs whatever callables the file names, so a checkpoint
someone sends us could run code on load. Every checkpoint is read with torch's ``weights_only``
unpickler (tensors, dicts, lists, tuples, str, numbers, None only); anything else is refused with a
clear error. The trainer writes only those plain types (``training/trainer.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from bmengine.engine.model.card import sha256_of
from bmengine.engine.model.torch_file import UnsafeModelFileError, load_plain_data


class UnsafeCheckpointError(UnsafeModelFileError):
    """A checkpoint that is not plain data, or not a trainer checkpoint."""


#: what every trainer checkpoint holds; callers name further keys they need
MODEL_KEYS = ("model", "model_spec")


def load_checkpoint(path: Path, require: tuple[str, ...] = MODEL_KEYS) -> dict:
    """The checkpoint's dict, read with ``weights_only=True``; refuses objects and missing keys."""
    try:
        state = load_plain_data(path, noun="checkpoint")
    except UnsafeModelFileError as exc:  # callers catch the checkpoint error; the message is the engine's
        raise UnsafeCheckpointError(str(exc)) from None
    if not isinstance(state, dict):
        raise UnsafeCheckpointError(f"{path}: not a trainer checkpoint (holds a {type(state).__name__}, not a dict)")
    if missing := [key for key in require if key not in state]:
        raise UnsafeCheckpointError(f"{path}: not a trainer checkpoint (lacks {', '.join(missing)})")
    return state


def load_model(path: Path, require: tuple[str, ...] = MODEL_KEYS) -> tuple[torch.nn.Module, dict]:
    """The model a checkpoint describes, in eval mode, with its weights; and the checkpoint itself."""
    from bmengine.engine.model.networks import ModelSpec, create_model

    state = load_checkpoint(path, tuple(dict.fromkeys(MODEL_KEYS + require)))
    model = create_model(ModelSpec(**state["model_spec"])).eval()
    model.load_state_dict(state["model"])
    return model, state


def provenance(path: Path, state: dict) -> dict:
    """How the checkpoint at ``path`` was trained, for a card whose own training fields describe
    only a later run started from it (``train --init-from``, ``interpolate``): the file and its
    sha256, the command, epochs, learning rate, its own starting point and augmentation."""
    config = state.get("config", {})
    return {"checkpoint": str(path), "sha256": sha256_of(path), "command": state.get("command", ""),
            "epochs": state.get("epoch"), "lr": config.get("lr"), "init_from": config.get("init_from"),
            "augmentation": state.get("augmentation") or {"preset": config.get("augment", "basic")}}


def started_from(config: dict) -> dict:
    """The card record of the checkpoint a run started from (``--init-from``), read if it is still
    on this machine; otherwise its path and that it could not be read. Empty for a run from scratch."""
    base = config.get("init_from")
    if not base:
        return {}
    if not Path(base).is_file():
        return {"checkpoint": str(base), "note": "not on this machine when the model was exported"}
    return provenance(Path(base), load_checkpoint(Path(base), require=("config",)))

