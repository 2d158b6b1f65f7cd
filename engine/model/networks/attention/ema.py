"""Efficient Multi-scale Attention (Ouyang et al., ICASSP 2023).

Channels are split into groups. In each group a 1x1 branch encodes position along height and
width (as coordinate attention, without reduction) and a 3x3 branch captures local context; each
branch's pooled descriptor, softmax-normalised, weights the other branch's map (cross-spatial
learning), and the sum gates the group's input.
"""

from __future__ import annotations

import torch
from torch import nn

from bmengine.engine.model.networks.attention.registry import ATTENTION


@ATTENTION.register("ema")
class EfficientMultiScaleAttention(nn.Module):
    def __init__(self, channels: int, groups: int = 8, **_: object):
        super().__init__()
        while channels % groups:  # largest divisor of channels not above the requested groups
            groups -= 1
        self.groups = groups
        g = channels // groups
        self.conv1x1 = nn.Conv2d(g, g, 1)
        self.conv3x3 = nn.Conv2d(g, g, 3, padding=1)
        self.norm = nn.GroupNorm(g, g)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        gx = x.reshape(n * self.groups, c // self.groups, h, w)
        along_h = gx.mean(dim=3, keepdim=True)  # (B, g, H, 1)
        along_w = gx.mean(dim=2, keepdim=True).transpose(2, 3)  # (B, g, W, 1)
        hw = self.conv1x1(torch.cat([along_h, along_w], dim=2))
        a_h, a_w = torch.split(hw, [h, w], dim=2)
        branch1 = self.norm(gx * a_h.sigmoid() * a_w.transpose(2, 3).sigmoid())
        branch2 = self.conv3x3(gx)
        b = gx.shape[0]
        desc1 = branch1.mean(dim=(2, 3)).softmax(dim=1).unsqueeze(1)  # (B, 1, g)
        desc2 = branch2.mean(dim=(2, 3)).softmax(dim=1).unsqueeze(1)
        weights = desc1 @ branch2.reshape(b, -1, h * w) + desc2 @ branch1.reshape(b, -1, h * w)
        return (gx * weights.reshape(b, 1, h, w).sigmoid()).reshape(n, c, h, w)
