"""Backbones and attention blocks (needs the ``[train]`` extra)."""

from bmengine.training.models.attention import ATTENTION
from bmengine.training.models.backbones import BACKBONES, ModelSpec, create_model

__all__ = ["ATTENTION", "BACKBONES", "ModelSpec", "create_model"]
