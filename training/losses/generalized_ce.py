"""Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): L_q = (1 - p_y^q) / q.

q -> 0 recovers cross-entropy, q = 1 is the mean absolute error; in between (q = 0.7 in the
paper) the loss bounds the pull of confidently wrong labels, which a long-tailed, partly
mislabelled cell archive has.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bmengine.training.losses.registry import LOSSES


@LOSSES.register("gce")
class GeneralizedCrossEntropy(nn.Module):
    def __init__(self, class_counts: np.ndarray, q: float = 0.7):
        super().__init__()
        if not 0 < q <= 1:
            raise ValueError(f"GCE needs 0 < q <= 1, got {q}")
        self.q = q

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p_y = F.softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        return ((1 - p_y.clamp_min(1e-12).pow(self.q)) / self.q).mean()
