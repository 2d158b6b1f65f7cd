"""Coordinate Attention (Hou, Zhou & Feng, CVPR 2021).

Pools along height and along width separately, so the gate keeps position along one axis:
the two descriptors share a 1x1 reduction (BN + hard-swish), then each gets its own 1x1
expansion and sigmoid; the output is x * a_h * a_w.
"""

from __future__ import annotations

import torch
from torch import nn

from bmengine.engine.model.networks.attention.registry import ATTENTION


@ATTENTION.register("ca")
class CoordinateAttention(nn.Module):
    def __init__(self, channels: int, rd_channels: int | None = None, rd_ratio: float = 1 / 32, **_: object):
        super().__init__()
        mid = rd_channels or max(8, int(channels * rd_ratio))
        self.reduce = nn.Sequential(nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.Hardswish())
        self.to_h = nn.Conv2d(mid, channels, 1)
        self.to_w = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        pooled_h = x.mean(dim=3, keepdim=True)  # (N, C, H, 1)
        pooled_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # (N, C, W, 1)
        y = self.reduce(torch.cat([pooled_h, pooled_w], dim=2))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = torch.sigmoid(self.to_h(y_h))  # (N, C, H, 1)
        a_w = torch.sigmoid(self.to_w(y_w.transpose(2, 3)))  # (N, C, 1, W)
        return x * a_h * a_w
