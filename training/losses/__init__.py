"""Classification losses, registered by name (needs the ``[train]`` extra)."""

from bmengine.training.losses.registry import LOSSES, LossSpec, create_loss
from bmengine.training.losses import cost_sensitive, cross_entropy, focal  # noqa: F401  (registers)

__all__ = ["LOSSES", "LossSpec", "create_loss"]
