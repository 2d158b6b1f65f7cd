"""The network definitions: backbones and attention blocks, built by name from a ``ModelSpec``.

They live in the engine, not in training, because both build them: the trainer to train, and the
torch backend to run a ``.pt`` whose card names its architecture. Importing them needs PyTorch and
timm (the ``[train]`` extra); nothing in the engine imports them unless it runs a ``.pt``.
"""

from bmengine.engine.model.networks.attention import ATTENTION, STAGE_ATTENTION
from bmengine.engine.model.networks.backbones import BACKBONES, ModelSpec, create_model

__all__ = ["ATTENTION", "STAGE_ATTENTION", "BACKBONES", "ModelSpec", "create_model"]
