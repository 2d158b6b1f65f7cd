"""Attention blocks (one small module each); importing the package registers them all."""

from bmengine.engine.model.networks.attention.registry import ATTENTION, STAGE_ATTENTION
from bmengine.engine.model.networks.attention import asae, cbam, coord, eca, ema, nam, se, simam  # noqa: F401

__all__ = ["ATTENTION", "STAGE_ATTENTION"]
