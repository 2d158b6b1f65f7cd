"""GMMCE: cross-entropy over the target and the k most and k least likely wrong classes (Wang et al.).

Our reading of ASAE-Net's loss (k = 3): the softmax normalises over the target logit, the top-k
negative logits (the confusable classes, e.g. neighbouring maturation stages) and the bottom-k
negative logits (the classes already far away, kept in so their margin is not forgotten); the
negatives in the middle drop out of the denominator. With C - 1 <= 2k every class stays and the
loss is plain cross-entropy.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bmengine.training.losses.registry import LOSSES


def kept_logits(logits: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N, C) mask: the target, its k highest and its k lowest negative logits."""
    num_classes = logits.shape[1]
    is_target = F.one_hot(target, num_classes).bool()
    k = min(k, num_classes - 1)
    top = logits.masked_fill(is_target, float("-inf")).topk(k, dim=1).indices
    bottom = logits.masked_fill(is_target, float("inf")).topk(k, dim=1, largest=False).indices
    keep = is_target.clone()
    keep.scatter_(1, top, True)
    keep.scatter_(1, bottom, True)
    return keep


@LOSSES.register("gmmce")
class GMMCrossEntropy(nn.Module):
    def __init__(self, class_counts: np.ndarray, k: int = 3):
        super().__init__()
        if k < 1:
            raise ValueError(f"GMMCE needs k >= 1, got {k}")
        self.k = k

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        keep = kept_logits(logits.detach(), target, self.k)
        return F.cross_entropy(logits.masked_fill(~keep, float("-inf")), target)
