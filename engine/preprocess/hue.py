"""Hue mapping of Wang et al. (ASAE-Net): every pixel's HSV hue is mapped linearly into [lo, hi].

Stains vary between labs and batches mostly in hue; squeezing all hues into one band (default
125-155 degrees) removes that variation while saturation and value (the morphology) stay. The
engine applies it inside its DALI pipeline, on the CPU or the GPU, with the same arithmetic as the
NumPy reference below; the trainer's image cache goes through the same pipeline, so training
and inference see identical pixels.
"""

from __future__ import annotations

import numpy as np


def _sextant_weights(h6: np.ndarray) -> list[np.ndarray]:
    sextant = np.floor(h6)
    return [(sextant == k).astype(np.float32) for k in range(6)]


def hue_map_numpy(rgb: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reference implementation on uint8 RGB (..., 3); returns uint8."""
    x = rgb.astype(np.float32)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    chroma = mx - mn
    safe = chroma + (chroma == 0)
    is_r, is_g = (mx == r), (mx != r) & (mx == g)
    is_b = ~is_r & ~is_g
    h6 = is_r * (g - b) / safe + is_g * ((b - r) / safe + 2) + is_b * ((r - g) / safe + 4)
    h6 = h6 + 6 * (h6 < 0)  # hue in sextants, 0..6
    h6 = (lo + (hi - lo) * h6 / 6) / 60  # mapped hue, in sextants
    x_ = chroma * (1 - np.abs(h6 - 2 * np.floor(h6 / 2) - 1))
    s = _sextant_weights(np.minimum(h6, 5.999))
    out = np.stack([mn + chroma * (s[0] + s[5]) + x_ * (s[1] + s[4]),
                    mn + chroma * (s[1] + s[2]) + x_ * (s[0] + s[3]),
                    mn + chroma * (s[3] + s[4]) + x_ * (s[2] + s[5])], axis=-1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def hue_map_dali(images, lo: float, hi: float):
    """The same arithmetic as :func:`hue_map_numpy`, as DALI operators on HWC uint8 images."""
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    x = fn.cast(images, dtype=types.FLOAT)
    r, g, b = x[:, :, 0], x[:, :, 1], x[:, :, 2]
    mx = dmath.max(dmath.max(r, g), b)
    mn = dmath.min(dmath.min(r, g), b)
    chroma = mx - mn
    safe = chroma + (chroma == 0) * 1.0
    is_r = (mx == r) * 1.0
    is_g = (1.0 - is_r) * (mx == g)
    is_b = 1.0 - is_r - is_g
    h6 = is_r * (g - b) / safe + is_g * ((b - r) / safe + 2.0) + is_b * ((r - g) / safe + 4.0)
    h6 = h6 + 6.0 * (h6 < 0)
    h6 = (lo + (hi - lo) * h6 / 6.0) / 60.0
    x_ = chroma * (1.0 - dmath.abs(h6 - 2.0 * dmath.floor(h6 / 2.0) - 1.0))
    sextant = dmath.floor(dmath.min(h6, 5.999))
    s = [(sextant == float(k)) * 1.0 for k in range(6)]
    out = fn.stack(mn + chroma * (s[0] + s[5]) + x_ * (s[1] + s[4]),
                   mn + chroma * (s[1] + s[2]) + x_ * (s[0] + s[3]),
                   mn + chroma * (s[3] + s[4]) + x_ * (s[2] + s[5]), axis=2)
    return fn.cast(dmath.clamp(out, 0.0, 255.0), dtype=types.UINT8)  # DALI casts round to nearest
