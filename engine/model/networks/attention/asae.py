"""ASAE: parameter-free attention-based suppression and enhancement (Wang et al., ASAE-Net).

Placed once after a backbone stage (ResNet ``layer3``), not inside every block. In training it
returns the mean of two branches computed from the channel-mean activation map A:

- suppression: peak stimulation finds A's local maxima (3x3), the top-k of them are the most
  discriminative spots, and a (2r+1)^2 neighbourhood around each is zeroed, so the later layers
  must also learn from the rest of the cell;
- enhancement: the features are weighted by sigmoid(A), favouring what the network already
  attends to.

At inference the layer is the identity (the exported model holds no trace of it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bmengine.engine.model.networks.attention.registry import STAGE_ATTENTION


def peak_mask(attention: torch.Tensor, k: int, window: int = 3) -> torch.Tensor:
    """(N, 1, H, W) float mask with 1 at the k strongest local maxima of each map."""
    n, _, h, w = attention.shape
    local_max = F.max_pool2d(attention, window, stride=1, padding=window // 2)
    candidates = attention.masked_fill(attention < local_max, float("-inf")).flatten(1)
    k = min(k, h * w)
    values, index = candidates.topk(k, dim=1)
    chosen = torch.zeros_like(candidates).scatter_(1, index, 1.0) * torch.isfinite(candidates).float()
    return chosen.view(n, 1, h, w)


@STAGE_ATTENTION.register("asae")
class ASAE(nn.Module):
    def __init__(self, top_k: int = 3, radius: int = 1, **_: object):
        super().__init__()
        self.top_k, self.radius = top_k, radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        attention = x.detach().float().mean(dim=1, keepdim=True)
        peaks = peak_mask(attention, self.top_k)
        size = 2 * self.radius + 1
        suppressed = 1.0 - F.max_pool2d(peaks, size, stride=1, padding=self.radius)
        enhancement = torch.sigmoid(x.float().mean(dim=1, keepdim=True))
        return (x * suppressed.to(x.dtype) + x * enhancement.to(x.dtype)) / 2
