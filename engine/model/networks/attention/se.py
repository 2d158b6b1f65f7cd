"""Squeeze-and-Excitation (Hu, Shen & Sun, CVPR 2018), and the no-op block for ablations."""

from __future__ import annotations

import torch
from torch import nn

from bmengine.engine.model.networks.attention.registry import ATTENTION


@ATTENTION.register("se")
class SqueezeExcite(nn.Module):
    """Global average pool -> bottleneck MLP -> sigmoid gate per channel.

    ``rd_ratio`` is relative to the block's input channels as in RegNetY (0.25 of the block
    input), which Hu et al. 2025 followed for RegNetX + SE.
    """

    def __init__(self, channels: int, rd_channels: int | None = None, rd_ratio: float = 0.25, **_: object):
        super().__init__()
        rd = rd_channels or max(8, int(round(channels * rd_ratio)))
        self.fc1 = nn.Conv2d(channels, rd, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(rd, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean(dim=(2, 3), keepdim=True)
        gate = self.fc2(self.act(self.fc1(gate)))
        return x * torch.sigmoid(gate)


@ATTENTION.register("none")
class NoAttention(nn.Identity):
    def __init__(self, channels: int, **_: object):
        super().__init__()
