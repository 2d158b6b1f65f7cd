"""Convolutional Block Attention Module (Woo et al., ECCV 2018).

Channel attention (average- and max-pooled descriptors through one shared MLP), then spatial
attention (channel-wise average and max maps through a 7x7 convolution), applied in sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from bmengine.engine.model.networks.attention.registry import ATTENTION


class ChannelGate(nn.Module):
    def __init__(self, channels: int, rd_channels: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(channels, rd_channels, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(rd_channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(x.mean(dim=(2, 3), keepdim=True))
        mx = self.mlp(x.amax(dim=(2, 3), keepdim=True))
        return x * torch.sigmoid(avg + mx)


class SpatialGate(nn.Module):
    def __init__(self, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(maps)))


@ATTENTION.register("cbam")
class CBAM(nn.Module):
    def __init__(self, channels: int, rd_channels: int | None = None, rd_ratio: float = 1 / 16,
                 kernel_size: int = 7, **_: object):
        super().__init__()
        self.channel = ChannelGate(channels, rd_channels or max(8, int(channels * rd_ratio)))
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
