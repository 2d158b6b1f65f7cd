"""Batch augmentation on uint8 image tensors (cheap on 2 CPU cores: no per-image PIL work).

The seed papers' recipe: random crops, flips, rotations and illumination jitter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentConfig:
    crop: int = 112
    flips: bool = True
    rot90: bool = True
    brightness: float = 0.2  # multiplicative, +-
    contrast: float = 0.2  # around the per-image mean, +-


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NHWC -> float NCHW (channels_last memory), normalised like the engine's DALI pipeline."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    h, w = images.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top : top + size, left : left + size]


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """uint8 NHWC in, float NHWC in 0..1 out (normalisation comes after)."""
    n, h, w, _ = images.shape
    tops = torch.randint(0, h - cfg.crop + 1, (n,), generator=generator)
    lefts = torch.randint(0, w - cfg.crop + 1, (n,), generator=generator)
    out = torch.stack([images[i, t : t + cfg.crop, l : l + cfg.crop] for i, (t, l) in enumerate(zip(tops, lefts))])
    out = out.float().div_(255.0)
    if cfg.flips:
        flip_h = torch.rand(n, generator=generator) < 0.5
        flip_v = torch.rand(n, generator=generator) < 0.5
        out[flip_h] = out[flip_h].flip(2)
        out[flip_v] = out[flip_v].flip(1)
    if cfg.rot90:
        k = torch.randint(0, 4, (n,), generator=generator)
        for turns in (1, 2, 3):
            sel = k == turns
            if sel.any():
                out[sel] = torch.rot90(out[sel], turns, dims=(1, 2))
    if cfg.brightness or cfg.contrast:
        b = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * cfg.brightness
        c = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * cfg.contrast
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * c + mean) * b
    return out.clamp_(0, 1)
