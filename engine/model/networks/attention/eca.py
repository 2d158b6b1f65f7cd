"""Efficient Channel Attention (Wang et al., CVPR 2020).

SE without the bottleneck: the pooled channel descriptor goes through a 1-d convolution across
neighbouring channels, whose kernel size grows with log2(C) (gamma=2, b=1 in the paper).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bmengine.engine.model.networks.attention.registry import ATTENTION


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    k = int(abs((math.log2(channels) + b) / gamma))
    return k if k % 2 else k + 1


@ATTENTION.register("eca")
class EfficientChannelAttention(nn.Module):
    def __init__(self, channels: int, gamma: int = 2, b: int = 1, **_: object):
        super().__init__()
        k = eca_kernel_size(channels, gamma, b)
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3))  # (N, C)
        y = self.conv(y.unsqueeze(1)).squeeze(1)  # mix each channel with its k neighbours
        return x * torch.sigmoid(y)[:, :, None, None]
