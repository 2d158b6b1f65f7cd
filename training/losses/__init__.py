"""Classification losses, registered by name (needs the ``[train]`` extra)."""

from bmengine.training.losses.registry import LOSSES, LossSpec, create_loss
from bmengine.training.losses import cost_sensitive, cross_entropy, focal, generalized_ce, gmmce  # noqa: F401

__all__ = ["LOSSES", "LossSpec", "create_loss"]
