"""SimAM, a parameter-free attention (Yang et al., ICML 2021).

Each activation's weight comes from the closed-form minimal energy of a linear separator between
it and the other activations of its channel: e_inv = (x - mu)^2 / (4 (var + lambda)) + 1/2;
the output is x * sigmoid(e_inv). Distinctive neurons get more weight; nothing is learned.
"""

from __future__ import annotations

import torch
from torch import nn

from bmengine.engine.model.networks.attention.registry import ATTENTION


@ATTENTION.register("simam")
class SimAM(nn.Module):
    def __init__(self, channels: int | None = None, e_lambda: float = 1e-4, **_: object):
        super().__init__()
        self.e_lambda = e_lambda

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3] - 1
        d = (x - x.mean(dim=(2, 3), keepdim=True)).pow(2)
        var = d.sum(dim=(2, 3), keepdim=True) / max(n, 1)
        e_inv = d / (4 * (var + self.e_lambda)) + 0.5
        return x * torch.sigmoid(e_inv)
