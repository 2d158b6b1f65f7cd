"""Classification losses, registered by name (needs the ``[train]`` extra)."""

from bmengine.training.losses.registry import LOSSES, LossSpec, create_loss
from bmengine.training.losses import cross_entropy, cost_sensitive  # noqa: F401  (registers)

__all__ = ["LOSSES", "LossSpec", "create_loss"]
