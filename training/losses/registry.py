"""The loss registry and the record that configures a loss."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from bmengine.engine.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")


@dataclass(frozen=True)
class LossSpec:
    name: str = "cost_sensitive"
    options: dict = field(default_factory=dict)


def create_loss(spec: LossSpec, class_counts: np.ndarray) -> nn.Module:
    """Losses get the training class counts: imbalance-aware ones derive weights from them."""
    return LOSSES.create(spec.name, class_counts=np.asarray(class_counts), **spec.options)
