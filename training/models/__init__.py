"""Backbones and attention blocks (needs the ``[train]`` extra)."""

from bmengine.training.models.attention import ATTENTION, STAGE_ATTENTION
from bmengine.training.models.backbones import BACKBONES, ModelSpec, create_model

__all__ = ["ATTENTION", "STAGE_ATTENTION", "BACKBONES", "ModelSpec", "create_model"]
