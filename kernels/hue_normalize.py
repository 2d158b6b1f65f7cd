"""Hue mapping fused with centre crop and normalisation, to fp16 NCHW, in one pass (Triton).

On the GPU, DALI's hue mapping (engine/preprocess/hue.py, ``hue_map_dali``) is a chain of about
thirty arithmetic operators, each reading and writing the whole batch, followed by
``crop_mirror_normalize``. This kernel reads each resized uint8 pixel once and writes the network's
fp16 input: the input an fp16 TensorRT plan takes, at half the bytes of float32.

``hue_normalize_reference`` is the NumPy reference (``hue_map_numpy`` + crop + normalise, the
arithmetic the engine's CPU pipeline does); tests compare the kernel with it under
``TRITON_INTERPRET=1``, and, without hue mapping, with the engine's own DALI output.
The centre crop starts at ``(resize - crop) // 2`` in both axes, DALI's position for an even
difference (crop_pos 0.5; engine cards use 144 -> 128 and 128 -> 112).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = tl = None


if triton is not None:

    @triton.jit
    def _rint(v):
        """Round half to even, as NumPy's ``round`` does."""
        f = tl.floor(v)
        d = v - f
        odd = (f - 2.0 * tl.floor(f / 2.0)) != 0.0
        return tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, tl.where(odd, f + 1.0, f)))

    @triton.jit
    def _hue_normalize(x_ptr, out_ptr, R, C, offset, lo, span, m0, m1, m2, s0, s1, s2,
                       HUE: tl.constexpr, BLOCK: tl.constexpr):
        n = tl.program_id(0)
        y = tl.program_id(1)  # output row
        xs = tl.arange(0, BLOCK)
        inside = xs < C
        src = x_ptr + n * R * R * 3 + (offset + y) * R * 3 + (offset + xs) * 3
        r = tl.load(src, mask=inside, other=0).to(tl.float32)
        g = tl.load(src + 1, mask=inside, other=0).to(tl.float32)
        b = tl.load(src + 2, mask=inside, other=0).to(tl.float32)
        if HUE:
            mx = tl.maximum(tl.maximum(r, g), b)
            mn = tl.minimum(tl.minimum(r, g), b)
            chroma = mx - mn
            safe = tl.where(chroma == 0.0, 1.0, chroma)
            is_r = mx == r
            is_g = (mx != r) & (mx == g)
            h6 = tl.where(is_r, (g - b) / safe, tl.where(is_g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
            h6 = tl.where(h6 < 0.0, h6 + 6.0, h6)
            h6 = (lo + span * h6 / 6.0) / 60.0
            second = chroma * (1.0 - tl.abs(h6 - 2.0 * tl.floor(h6 / 2.0) - 1.0))
            sextant = tl.floor(tl.minimum(h6, 5.999))
            zero, one, two = sextant == 0.0, sextant == 1.0, sextant == 2.0
            three, four, five = sextant == 3.0, sextant == 4.0, sextant == 5.0
            r = mn + tl.where(zero | five, chroma, 0.0) + tl.where(one | four, second, 0.0)
            g = mn + tl.where(one | two, chroma, 0.0) + tl.where(zero | three, second, 0.0)
            b = mn + tl.where(three | four, chroma, 0.0) + tl.where(two | five, second, 0.0)
            r = tl.minimum(tl.maximum(_rint(r), 0.0), 255.0)
            g = tl.minimum(tl.maximum(_rint(g), 0.0), 255.0)
            b = tl.minimum(tl.maximum(_rint(b), 0.0), 255.0)
        plane = C * C
        dst = out_ptr + n * 3 * plane + y * C + xs
        tl.store(dst, ((r - m0) / s0).to(tl.float16), mask=inside)
        tl.store(dst + plane, ((g - m1) / s1).to(tl.float16), mask=inside)
        tl.store(dst + 2 * plane, ((b - m2) / s2).to(tl.float16), mask=inside)


def hue_normalize(images, crop: int, mean: Sequence[float], std: Sequence[float],
                  hue_range: tuple[float, float] | None = None):
    """Resized uint8 NHWC crops (a torch tensor on the GPU; on the CPU under ``TRITON_INTERPRET=1``)
    -> the centre ``crop``, hue-mapped into ``hue_range`` degrees if given, normalised with the
    card's ``mean``/``std`` (0-1 units), as an fp16 NCHW tensor on the same device."""
    import torch

    if triton is None:
        raise RuntimeError("Triton is not installed: install the [gpu] extra")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"expected square uint8 NHWC RGB crops, got {images.dtype} {tuple(images.shape)}")
    n, resize = int(images.shape[0]), int(images.shape[1])
    if crop > resize or (resize - crop) % 2:
        raise ValueError(f"a centre crop of {crop} from {resize} px needs an even, non-negative difference")
    x = images.contiguous()
    out = torch.empty((n, 3, crop, crop), dtype=torch.float16, device=x.device)
    lo, hi = hue_range if hue_range else (0.0, 360.0)
    m = [255.0 * v for v in mean]
    s = [255.0 * v for v in std]
    block = 1 << max(0, int(crop - 1).bit_length())
    _hue_normalize[(n, crop)](x, out, resize, crop, (resize - crop) // 2, float(lo), float(hi - lo),
                              *m, *s, HUE=hue_range is not None, BLOCK=block)
    return out


def hue_normalize_reference(images: np.ndarray, crop: int, mean: Sequence[float], std: Sequence[float],
                            hue_range: tuple[float, float] | None = None) -> np.ndarray:
    """NumPy reference: ``hue_map_numpy``, the centre crop, then (x - 255 mean) / (255 std), fp16."""
    from bmengine.engine.preprocess.hue import hue_map_numpy

    x = np.asarray(images)
    start = (x.shape[1] - crop) // 2
    x = x[:, start : start + crop, start : start + crop]
    if hue_range is not None:
        x = hue_map_numpy(x, *hue_range)
    m = np.float32(255.0) * np.asarray(mean, dtype=np.float32)
    s = np.float32(255.0) * np.asarray(std, dtype=np.float32)
    return ((x.astype(np.float32) - m) / s).transpose(0, 3, 1, 2).astype(np.float16)
