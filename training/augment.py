"""Batch augmentation on uint8 image tensors (cheap on 2 CPU cores: no per-image PIL work).

The seed papers' recipe: random crops, flips, rotations and illumination jitter (``basic``, the
default: every field below that is off by default leaves the output, random draws included, exactly
as before, so old configurations reproduce).

The cross-lab recipe (issue 10: generalise across stain, camera and magnification) adds, each one
vectorised over the batch on CPU tensors:

- **field-of-view scale** (``zoom_range``): a batched affine (``affine_grid``/``grid_sample``,
  bilinear, reflection padding) zooms the whole resized image about its centre by a factor drawn
  log-uniformly from the range (> 1: the cell looks larger), before the random crop. Other labs
  image cells up to ~2x larger in the frame than PBC's CellaVision crops.
- **stain** (``hed_scale``, ``hed_shift``): colour deconvolution into haematoxylin / eosin / DAB
  optical densities with the Ruifrok-Johnston matrix, a per-image scale ``U(1-s, 1+s)`` and shift
  ``U(-b, b)`` (optical-density units) of each of the three channels, and back (Tellez et al. 2018).
- **background tint** (``tint``): a per-image, per-channel gain ``U(1-t, 1+t)`` (white balance:
  PBC's background is pinkish, another lab's yellowish).
- **hue / saturation / gamma** (``hue`` degrees, ``saturation``, ``gamma``): a hue rotation and a
  saturation scale in YIQ space (one 3x3 matrix per image) and ``x ** g`` with ``log g`` uniform in
  ``+-log(1 + gamma)``.
- **random convolution** (``randconv_p``, ``randconv_mix``): on a random share of the batch, a
  3 -> 3 convolution with random Gaussian weights (kernel 1, 3, 5 or 7, He-scaled), its output
  matched to the image's own per-channel mean and spread and mixed back with the image by a factor
  ``U(0, randconv_mix)`` (RandConv, Xu et al., ICLR 2021: it scrambles local colour and texture
  while keeping shapes, which is what a new lab's stain and optics change).
- **camera** (``blur_p``, ``noise_p``, ``jpeg_p``): on a random share of the batch, a Gaussian
  blur of random sigma, additive Gaussian noise of random standard deviation, and JPEG
  re-compression at a random quality (``torchvision.io.encode_jpeg``/``decode_jpeg``).

Presets (``PRESETS``, ``bmengine train --augment NAME``): ``basic``, ``stain``, ``scale``,
``stain-scale`` and ``cross-lab`` (all of it). ``--augment-opt key=value`` overrides one field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    crop: int = 112
    flips: bool = True
    rot90: bool = True
    brightness: float = 0.2  # multiplicative, +-
    contrast: float = 0.2  # around the per-image mean, +-
    # --- cross-lab augmentation; every default is off ---
    zoom_range: tuple[float, float] | None = None  # field-of-view scale, log-uniform; 2.0 = cell twice as large
    zoom_p: float = 1.0  # share of the batch zoomed (the others keep the cached scale)
    zoom_detail: float = 1.0  # > 1: zoom-ins resampled from a cache this many times larger (sharp, not upsampled)
    hed_scale: float = 0.0  # per-image H, E, D optical-density factor U(1-s, 1+s)
    hed_shift: float = 0.0  # per-image H, E, D optical-density offset U(-b, b)
    tint: float = 0.0  # per-image, per-channel RGB gain U(1-t, 1+t) (background tint / white balance)
    hue: float = 0.0  # hue rotation U(-h, h) degrees (YIQ)
    saturation: float = 0.0  # saturation factor U(1-s, 1+s) (YIQ chroma)
    gamma: float = 0.0  # x ** g, log g ~ U(-log(1+gamma), log(1+gamma))
    colour_p: float = 1.0  # share of the batch given the stain / tint / hue / saturation / gamma jitter
    randconv_p: float = 0.0  # share of the batch passed through a random convolution (RandConv)
    randconv_mix: float = 1.0  # that convolution's weight in the mix, U(0, randconv_mix)
    blur_p: float = 0.0  # share of the batch blurred
    blur_sigma: tuple[float, float] = (0.3, 1.5)  # Gaussian sigma in pixels, uniform
    noise_p: float = 0.0  # share of the batch given additive Gaussian noise
    noise_std: tuple[float, float] = (0.005, 0.03)  # its standard deviation (0..1 scale), uniform
    jpeg_p: float = 0.0  # share of the batch re-compressed as JPEG
    jpeg_quality: tuple[int, int] = (30, 95)  # quality, uniform integer


_STAIN = dict(hed_scale=0.25, hed_shift=0.05, tint=0.15, hue=30.0, saturation=0.4, gamma=0.25)
_SCALE = dict(zoom_range=(0.7, 2.2))
_CAMERA = dict(blur_p=0.3, noise_p=0.3, jpeg_p=0.3)

#: named recipes; ``basic`` is what every model before the cross-lab work was trained with
PRESETS: dict[str, dict] = {
    "basic": {},
    "stain": _STAIN,
    "scale": _SCALE,
    "stain-scale": {**_STAIN, **_SCALE},
    "cross-lab": {**_STAIN, **_SCALE, **_CAMERA},
}


def make_augment_config(preset: str = "basic", crop: int = 112, **overrides) -> AugmentConfig:
    """The preset's config at this crop size, with ``overrides`` (field name -> value) applied."""
    if preset not in PRESETS:
        raise KeyError(f"unknown augmentation preset {preset!r}; known: {', '.join(PRESETS)}")
    names = {f.name for f in fields(AugmentConfig)}
    if unknown := set(overrides) - names:
        raise KeyError(f"unknown augmentation option(s) {sorted(unknown)}; known: {sorted(names - {'crop'})}")
    cfg = replace(AugmentConfig(crop=crop), **PRESETS[preset])
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()}
    return replace(cfg, **values)


def parse_augment_options(items: list[str] | None, flag: str = "--augment-opt") -> dict:
    """``["zoom_range=0.7,2.2", "jpeg_p=0.5", "flips=false"]`` -> typed overrides for ``AugmentConfig``."""
    types = {f.name: f.default for f in fields(AugmentConfig)}
    out: dict = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in types or key == "crop":
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE with KEY one of "
                             f"{sorted(k for k in types if k != 'crop')}")
        default = types[key]
        text = text.strip()
        if text.lower() in ("none", "off", "") and key == "zoom_range":
            out[key] = None
        elif isinstance(default, bool):
            out[key] = text.lower() in ("1", "true", "yes", "on")
        elif isinstance(default, tuple) or key == "zoom_range":
            parts = [float(v) for v in text.split(",")]
            if len(parts) != 2 or parts[0] > parts[1]:
                raise ValueError(f"{flag} {item!r}: expected LOW,HIGH")
            out[key] = tuple(int(p) for p in parts) if key == "jpeg_quality" else tuple(parts)
        else:
            out[key] = float(text)
    return out


def describe(cfg: AugmentConfig) -> dict:
    """The recipe as plain JSON data (checkpoint and model card)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NHWC -> float NCHW (channels_last memory), normalised like the engine's DALI pipeline."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    h, w = images.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top : top + size, left : left + size]


def _uniform(n: int, low: float, high: float, generator: torch.Generator, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, *shape, generator=generator)


# --- individual operations (float NHWC in 0..1 unless said otherwise) --------------------------


def zoom(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Zoom each image about its centre by ``factors[i]`` (> 1 enlarges), same size out; bilinear,
    out-of-frame samples reflected back into the image. float NHWC in, float NHWC out."""
    n = images.shape[0]
    x = images.permute(0, 3, 1, 2)
    theta = torch.zeros(n, 2, 3, dtype=x.dtype)
    theta[:, 0, 0] = 1.0 / factors
    theta[:, 1, 1] = 1.0 / factors
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.permute(0, 2, 3, 1)


#: Ruifrok & Johnston (2001) stain vectors (rows: haematoxylin, eosin, DAB), as in scikit-image
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_OD_EPS = 1.0 / 255.0


def hed_jitter(images: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Per-image HED optical densities ``od * scale[i] + shift[i]`` (``scale``, ``shift``: (N, 3)).

    Deconvolution, jitter and reconvolution are linear in optical density, so each image gets one
    3x3 matrix and one offset (a batched matrix product, not three)."""
    n = images.shape[0]
    base = -math.log(1 + _OD_EPS)  # od of a white pixel: white stays white under any scale
    od = torch.log(images.clamp(min=0) + _OD_EPS).neg_().sub_(base)
    matrix = HED_FROM_RGB @ torch.diag_embed(scale) @ RGB_FROM_HED  # (N, 3, 3), row vectors
    offset = (shift @ RGB_FROM_HED).unsqueeze(1)  # (N, 1, 3)
    od = torch.baddbmm(offset, od.reshape(n, -1, 3), matrix).reshape(images.shape)
    return od.add_(base).neg_().exp_().sub_(_OD_EPS).clamp_(0, 1)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


def hue_saturation(images: torch.Tensor, hue_deg: torch.Tensor, sat: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``hue_deg[i]`` degrees and scale chroma by ``sat[i]`` (one 3x3 matrix per image)."""
    a = hue_deg * (math.pi / 180.0)
    cos, sin = torch.cos(a) * sat, torch.sin(a) * sat
    m = torch.zeros(len(a), 3, 3)
    m[:, 0, 0] = 1
    m[:, 1, 1], m[:, 1, 2], m[:, 2, 1], m[:, 2, 2] = cos, -sin, sin, cos
    full = _YIQ_TO_RGB @ m @ _RGB_TO_YIQ  # (N, 3, 3) acting on column vectors
    n = images.shape[0]
    return torch.bmm(images.reshape(n, -1, 3), full.transpose(1, 2)).reshape(images.shape).clamp_(0, 1)


def gaussian_blur(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, one sigma per image (depthwise convolution, reflected borders)."""
    n, h, w, c = images.shape
    radius = max(1, int(math.ceil(3 * float(sigmas.max()))))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigmas[:, None]) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*c, K)
    x = images.permute(0, 3, 1, 2).reshape(1, n * c, h, w)
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k[:, None, None, :], groups=n * c)
    x = F.conv2d(x, k[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w).permute(0, 2, 3, 1)


RANDCONV_KERNELS = (1, 3, 5, 7)


def random_convolution(images: torch.Tensor, sizes: torch.Tensor, mix: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """Each image through its own random 3 -> 3 convolution of side ``sizes[i]`` (He-normal
    weights, reflected borders), rescaled to the image's per-channel mean and standard deviation,
    then ``mix[i] * convolved + (1 - mix[i]) * image``. float NHWC in 0..1 in and out."""
    n, h, w, c = images.shape
    out = images.clone()
    x_all = images.permute(0, 3, 1, 2)
    for k in sizes.unique().tolist():
        sel = torch.nonzero(sizes == k).flatten()
        m = len(sel)
        weights = torch.randn(m * c, c, k, k, generator=generator) / math.sqrt(c * k * k)
        x = x_all[sel].reshape(1, m * c, h, w)
        if k > 1:
            x = F.pad(x, (k // 2,) * 4, mode="reflect")
        y = F.conv2d(x, weights, groups=m).reshape(m, c, h, w)
        src = x_all[sel]
        y_mean, y_std = y.mean(dim=(2, 3), keepdim=True), y.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)
        y = (y - y_mean) / y_std * src.std(dim=(2, 3), keepdim=True) + src.mean(dim=(2, 3), keepdim=True)
        a = mix[sel].view(-1, 1, 1, 1)
        out[sel] = (a * y + (1 - a) * src).clamp_(0, 1).permute(0, 2, 3, 1)
    return out


def jpeg(images: torch.Tensor, qualities: torch.Tensor) -> torch.Tensor:
    """JPEG re-compression of each image at its own quality (uint8 round trip)."""
    import warnings

    from torchvision.io import decode_jpeg, encode_jpeg

    u8 = images.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 3, 1, 2)
    with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec; these still work and are fast
        warnings.simplefilter("ignore", DeprecationWarning)
        out = [decode_jpeg(encode_jpeg(img.contiguous(), quality=int(q))) for img, q in zip(u8, qualities)]
    return torch.stack(out).permute(0, 2, 3, 1).float().div_(255.0)


def _subset(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.nonzero(torch.rand(n, generator=generator) < p).flatten()


def zoom_in_from_detail(detail: torch.Tensor, factors: torch.Tensor, size: int) -> torch.Tensor:
    """Zoom each image about its centre by ``factors[i]`` (>= 1) taking the pixels from ``detail``, the
    same images cached larger (uint8 NHWC): the central ``1 / factor`` of the frame is resized down
    (antialiased) to ``size``, so a 2x zoom shows real detail, as a microscope at 2x would, instead of
    an upsampled, softer picture. float NHWC in 0..1 out."""
    side = detail.shape[1]
    out = torch.empty(len(factors), size, size, 3)
    for i, factor in enumerate(factors.tolist()):
        region = max(1, min(side, round(side / factor)))
        top = (side - region) // 2
        patch = detail[i, top : top + region, top : top + region].permute(2, 0, 1)[None].float().div_(255.0)
        out[i] = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)[0].permute(1, 2, 0)
    return out.clamp_(0, 1)


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
            detail: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 NHWC in, float NHWC in 0..1 out (normalisation comes after). ``detail``: the same images
    cached ``cfg.zoom_detail`` times larger; zoom-ins are then taken from it (``zoom_in_from_detail``)."""
    n, h, w, _ = images.shape
    if cfg.zoom_range is not None:  # before the crop, on the whole resized image
        lo, hi = math.log(cfg.zoom_range[0]), math.log(cfg.zoom_range[1])
        factors = torch.exp(_uniform(n, lo, hi, generator))
        if cfg.zoom_p < 1:
            factors[torch.rand(n, generator=generator) >= cfg.zoom_p] = 1.0
        zoomed = zoom(images.float().div_(255.0), factors)
        if detail is not None:
            ins = torch.nonzero(factors > 1).flatten()
            if len(ins):
                zoomed[ins] = zoom_in_from_detail(detail[ins], factors[ins], h)
        images = zoomed
    tops = torch.randint(0, h - cfg.crop + 1, (n,), generator=generator)
    lefts = torch.randint(0, w - cfg.crop + 1, (n,), generator=generator)
    out = torch.stack([images[i, t : t + cfg.crop, l : l + cfg.crop] for i, (t, l) in enumerate(zip(tops, lefts))])
    if out.dtype == torch.uint8:
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
    colour = any((cfg.hed_scale, cfg.hed_shift, cfg.tint, cfg.hue, cfg.saturation, cfg.gamma))
    # images outside the colour share get identity parameters (drawn only when colour_p < 1: the
    # presets' random streams stay as they were)
    keep = (torch.rand(n, generator=generator) >= cfg.colour_p) if colour and cfg.colour_p < 1 else None

    def _id(values: torch.Tensor, identity: float) -> torch.Tensor:
        if keep is not None:
            values[keep] = identity
        return values

    if cfg.hed_scale or cfg.hed_shift:
        scale = _id(_uniform(n, 1 - cfg.hed_scale, 1 + cfg.hed_scale, generator, 3), 1.0)
        shift = _id(_uniform(n, -cfg.hed_shift, cfg.hed_shift, generator, 3), 0.0)
        out = hed_jitter(out, scale, shift)
    if cfg.tint:
        out = (out * _id(_uniform(n, 1 - cfg.tint, 1 + cfg.tint, generator, 1, 1, 3), 1.0)).clamp_(0, 1)
    if cfg.hue or cfg.saturation:
        out = hue_saturation(out, _id(_uniform(n, -cfg.hue, cfg.hue, generator), 0.0),
                             _id(_uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, generator), 1.0))
    if cfg.gamma:
        g = math.log(1 + cfg.gamma)
        out = out.clamp_(0, 1).pow_(torch.exp(_id(_uniform(n, -g, g, generator, 1, 1, 1), 0.0)))
    if cfg.brightness or cfg.contrast:
        b = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * cfg.brightness
        c = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * cfg.contrast
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * c + mean) * b
    if cfg.randconv_p:
        sel = _subset(n, cfg.randconv_p, generator)
        sizes = torch.tensor(RANDCONV_KERNELS)[torch.randint(0, len(RANDCONV_KERNELS), (n,), generator=generator)][sel]
        mix = _uniform(n, 0.0, cfg.randconv_mix, generator)[sel]
        if len(sel):
            out[sel] = random_convolution(out[sel].clamp(0, 1), sizes, mix, generator)
    if cfg.blur_p:
        sel = _subset(n, cfg.blur_p, generator)
        sigmas = _uniform(n, *cfg.blur_sigma, generator)[sel]
        if len(sel):
            out[sel] = gaussian_blur(out[sel], sigmas)
    if cfg.noise_p:
        sel = _subset(n, cfg.noise_p, generator)
        stds = _uniform(n, *cfg.noise_std, generator)[sel]
        if len(sel):
            noise = torch.randn(len(sel), *out.shape[1:], generator=generator)
            out[sel] = out[sel] + noise * stds.view(-1, 1, 1, 1)
    if cfg.jpeg_p:
        sel = _subset(n, cfg.jpeg_p, generator)
        qualities = torch.randint(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, (n,), generator=generator)[sel]
        if len(sel):
            out[sel] = jpeg(out[sel].clamp(0, 1), qualities)
    return out.clamp_(0, 1)


def augment_normalised(batch: np.ndarray, cfg: AugmentConfig, mean: tuple[float, ...], std: tuple[float, ...],
                       generator: torch.Generator) -> np.ndarray:
    """A batch as the engine's pipeline hands it to a model (float NCHW, normalised, at the crop size)
    through ``augment`` and back: int8 calibration on crops that carry the training recipe's colours
    and scales (training/export.py). The crop is the whole image here, so only flips, turns, zoom,
    colour and camera changes act."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)
    pixels = np.clip(batch * s + m, 0.0, 1.0).transpose(0, 2, 3, 1)  # NHWC in 0..1
    images = torch.from_numpy(np.rint(pixels * 255.0).astype(np.uint8))
    out = augment(images, replace(cfg, crop=images.shape[1]), generator).numpy().transpose(0, 3, 1, 2)
    return np.ascontiguousarray((out - m) / s, dtype=np.float32)
