"""Cross-entropy, the baseline of every comparison, and its label-smoothed form (Szegedy et al. 2016)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bmengine.training.losses.registry import LOSSES


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    def __init__(self, class_counts: np.ndarray, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), target, label_smoothing=self.label_smoothing)


@LOSSES.register("label_smoothing")
class LabelSmoothing(CrossEntropy):
    """Cross-entropy against targets with ``smoothing`` spread evenly over all classes."""

    def __init__(self, class_counts: np.ndarray, smoothing: float = 0.1):
        super().__init__(class_counts, label_smoothing=smoothing)
