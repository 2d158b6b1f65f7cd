"""A multi-scale CNN with visual attention and multi-scale cross attention, after Surekha et al.

Three convolutional stages give features at strides 4, 8 and 16. Each scale gets a spatial
visual-attention gate (1x1 conv -> sigmoid) and is projected to a common width. Tokens of the
coarsest scale (global context) then attend to the tokens of all scales (multi-scale cross
attention, one multi-head attention layer), so coarse context picks the fine detail it needs
(granules, nuclear chromatin). Pooled coarse features and the attended tokens feed the classifier.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MultiBranchStage(nn.Module):
    """Parallel 3x3, dilated 3x3 (d=2) and 1x1 branches, concatenated then fused, with downsampling."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        branch = cout // 2
        self.down = _conv(cin, cout, stride=2)
        self.small = _conv(cout, branch)
        self.wide = _conv(cout, branch, dilation=2)
        self.fuse = nn.Sequential(nn.Conv2d(2 * branch + cout, cout, 1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return self.fuse(torch.cat([self.small(x), self.wide(x), x], dim=1))


class VisualAttention(nn.Module):
    """Spatial gate: where on this scale to look."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate(x))


class MultiScaleCrossAttentionNet(nn.Module):
    def __init__(self, num_classes: int, widths: tuple[int, int, int] = (64, 128, 256), dim: int = 128,
                 heads: int = 4, drop_rate: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(_conv(3, 32, stride=2), _conv(32, 32))
        chans = (32,) + widths
        self.stages = nn.ModuleList(MultiBranchStage(chans[i], chans[i + 1]) for i in range(3))
        self.attend = nn.ModuleList(VisualAttention(w) for w in widths)
        self.project = nn.ModuleList(nn.Conv2d(w, dim, 1) for w in widths)
        # bring every scale to the coarsest one's grid (stride 16) with fixed pools (ONNX-friendly)
        self.pools = nn.ModuleList([nn.AvgPool2d(4), nn.AvgPool2d(2), nn.Identity()])
        self.cross = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(dim + widths[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        tokens = []
        for stage, attend, project, pool in zip(self.stages, self.attend, self.project, self.pools):
            x = attend(stage(x))
            tokens.append(pool(project(x)).flatten(2).transpose(1, 2))  # (N, T, dim)
        keys = torch.cat(tokens, dim=1)
        queries = tokens[-1]
        attended, _ = self.cross(queries, keys, keys)
        context = self.norm(attended + queries).mean(dim=1)
        return self.head(torch.cat([context, x.mean(dim=(2, 3))], dim=1))
