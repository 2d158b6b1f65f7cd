"""Feature-style randomisation during training: another lab's look, imitated inside the network.

A convolutional layer's per-channel mean and spread over the image plane carry an image's "style"
(stain, camera, exposure); its normalised map carries the content. Two published ways to train on
styles a single source lab never shows, both active only in ``model.train()`` mode and only while
the trainer holds the hooks, so checkpoints, exports and inference are untouched:

- ``mixstyle`` (Zhou et al., ICLR 2021): mix each image's channel statistics with another image's of
  the same batch, weight drawn from Beta(alpha, alpha).
- ``dsu`` (Li et al., ICLR 2022, "Uncertainty modelling of domain shifts"): move each image's
  statistics by Gaussian noise scaled by how much those statistics vary across the batch, so that
  styles beyond the batch's own are drawn too.

The hooks sit after the early stages (where style lives, not class), chosen per backbone family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

EPS = 1e-6


@dataclass(frozen=True)
class FeatureStyleConfig:
    method: str = "none"  # none | mixstyle | dsu
    p: float = 0.5  # chance that one batch passing one hooked stage is re-styled
    alpha: float = 0.1  # mixstyle: Beta(alpha, alpha) mixing weight

    def __post_init__(self) -> None:
        if self.method not in STYLE_METHODS and self.method != "none":
            raise ValueError(f"unknown feature style {self.method!r}; known: none, {', '.join(sorted(STYLE_METHODS))}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"feature style p must be in [0, 1], got {self.p}")
        if self.alpha <= 0:
            raise ValueError(f"feature style alpha must be > 0, got {self.alpha}")


def _statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = (x.var(dim=(2, 3), keepdim=True) + EPS).sqrt()
    return mean.detach(), std.detach()


def _beta(alpha: float, n: int, generator: torch.Generator) -> torch.Tensor:
    """Beta(alpha, alpha) weights, seeded from ``generator`` (torch.distributions takes no generator)."""
    seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n)).float()


def mixstyle(x: torch.Tensor, cfg: FeatureStyleConfig, generator: torch.Generator) -> torch.Tensor:
    """Each image's channel statistics mixed with a random batch partner's."""
    mean, std = _statistics(x)
    weight = _beta(cfg.alpha, x.shape[0], generator).view(-1, 1, 1, 1).to(x.device, x.dtype)
    partner = torch.randperm(x.shape[0], generator=generator).to(x.device)  # drawn on the CPU: same on any device
    mixed_mean = weight * mean + (1 - weight) * mean[partner]
    mixed_std = weight * std + (1 - weight) * std[partner]
    return (x - mean) / std * mixed_std + mixed_mean


def dsu(x: torch.Tensor, cfg: FeatureStyleConfig, generator: torch.Generator) -> torch.Tensor:
    """Each image's channel statistics moved by noise as large as their spread across the batch."""
    mean, std = _statistics(x)
    mean_spread = (mean.var(dim=0, keepdim=True) + EPS).sqrt()
    std_spread = (std.var(dim=0, keepdim=True) + EPS).sqrt()
    noise = torch.randn((2, *mean.shape), generator=generator).to(x.device, x.dtype)
    new_mean = mean + noise[0] * mean_spread
    new_std = torch.maximum(std + noise[1] * std_spread, 0.1 * std)  # never erase or flip a channel
    return (x - mean) / std * new_std + new_mean


STYLE_METHODS: dict[str, Callable[[torch.Tensor, FeatureStyleConfig, torch.Generator], torch.Tensor]] = {
    "mixstyle": mixstyle,
    "dsu": dsu,
}


def style_stages(model: nn.Module) -> list[nn.Module]:
    """The early stages whose outputs are re-styled: the first two of each backbone family."""
    for names in (("s1", "s2"), ("layer1", "layer2")):  # RegNet, ResNet/ResNeXt
        if all(hasattr(model, name) for name in names):
            return [getattr(model, name) for name in names]
    stages = getattr(model, "stages", None)  # timm's MaxxVit (CoAtNet), EfficientNet-style ``blocks`` below
    if isinstance(stages, nn.Sequential | nn.ModuleList) and len(stages) >= 2:
        return [stages[0], stages[1]]
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential | nn.ModuleList) and len(blocks) >= 2:
        return [blocks[0], blocks[1]]
    raise ValueError(f"feature-style randomisation does not know the early stages of {type(model).__name__}")


class FeatureStyleHooks:
    """Forward hooks that re-style the early stages' outputs in training mode; ``remove()`` undoes them."""

    def __init__(self, model: nn.Module, cfg: FeatureStyleConfig, generator: torch.Generator) -> None:
        self.cfg, self.generator = cfg, generator
        self.calls = 0  # batches re-styled, for tests and logs
        restyle = STYLE_METHODS[cfg.method]

        def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if not module.training or output.shape[0] < 2:
                return None
            if torch.rand((), generator=self.generator).item() >= cfg.p:
                return None
            self.calls += 1
            return restyle(output.float(), cfg, self.generator).to(output.dtype)

        self._handles = [stage.register_forward_hook(hook) for stage in style_stages(model)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def attach_feature_style(model: nn.Module, cfg: FeatureStyleConfig, seed: int) -> FeatureStyleHooks | None:
    if cfg.method == "none":
        return None
    return FeatureStyleHooks(model, cfg, torch.Generator().manual_seed(seed))
