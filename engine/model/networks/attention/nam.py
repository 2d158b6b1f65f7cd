"""Normalization-based Attention Module, channel branch (Liu et al., NeurIPS workshop 2021).

The scale factors of a batch normalisation measure how much each channel varies; normalised
to sum to one they weight the channels: out = x * sigmoid(w * BN(x)), w_i = |gamma_i| / sum |gamma|.
"""

from __future__ import annotations

import torch
from torch import nn

from bmengine.engine.model.networks.attention.registry import ATTENTION


@ATTENTION.register("nam")
class NAM(nn.Module):
    def __init__(self, channels: int, **_: object):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.bn.weight.abs()
        weights = (gamma / gamma.sum()).view(1, -1, 1, 1)
        return x * torch.sigmoid(self.bn(x) * weights)
