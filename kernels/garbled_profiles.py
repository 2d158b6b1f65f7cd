"""Garbled-crop profiles on the GPU batch (Triton), so QC images never leave the GPU.

The garbled-crop check (engine/qc/garbled.py) reads four traces of JPEG damage from a few profiles
per crop: the mean change across every row boundary and every column boundary, the median colour
step over the width at every second row boundary, and per row its largest pixel-to-pixel change
and its mean level. Computing those profiles is the pixel-heavy part; they are a few hundred
numbers per crop, so on a GPU only they cross to the host (about 2 KB per crop instead of the
61 KB of a 144 px QC image), and the thresholds are applied there by the same NumPy code as on
the CPU. ``garbled_profiles_reference`` is that NumPy code; tests run these kernels under
``TRITON_INTERPRET=1`` on the CPU and compare them with it on real crops, clean and damaged.

Layout: one uint8 NHWC batch, contiguous. Two kernels:
- ``_row_profiles``: one program per (crop, row): row change to the next row, colour step to the
  row after next (median over every second column, per channel, by ``tl.sort``), the row's
  largest change between neighbouring columns and its mean level, and the sums the exposure and
  colour checks need (brightness, its square, clipped-white pixels, chroma) over every second
  pixel, so no QC check needs the images on the host;
- ``_column_profiles``: one program per crop, looping over rows: the change across each column
  boundary summed down the crop.
"""

from __future__ import annotations

import numpy as np

try:
    import triton
    import triton.language as tl
except ImportError:  # the [gpu] extra (or torch's own dependency) brings triton
    triton = tl = None

def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


if triton is not None:
    _PAD = tl.constexpr(1 << 20)  # sorts after every real colour step (|step| <= 255)

    @triton.jit
    def _row_profiles(x_ptr, row_change_ptr, shift_ptr, bumpiest_ptr, level_ptr, stats_ptr, H, W,
                      BLOCK_W: tl.constexpr, BLOCK_HALF: tl.constexpr):
        n = tl.program_id(0)
        h = tl.program_id(1)
        row_len = W * 3
        base = x_ptr + n * H * row_len + h * row_len
        w = tl.arange(0, BLOCK_W)
        c = tl.arange(0, 4)
        offsets = w[:, None] * 3 + c[None, :]  # (BLOCK_W, 4): column, channel (the 4th is padding)
        inside = (w[:, None] < W) & (c[None, :] < 3)
        cur = tl.load(base + offsets, mask=inside, other=0).to(tl.int32)

        tl.store(level_ptr + n * H + h, tl.sum(tl.sum(cur, axis=1), axis=0).to(tl.float32) / row_len)

        beside = (w[:, None] < W - 1) & (c[None, :] < 3)
        right = tl.load(base + offsets + 3, mask=beside, other=0).to(tl.int32)
        step = tl.where(beside, tl.abs(right - cur), 0)
        tl.store(bumpiest_ptr + n * H + h, tl.max(tl.max(step, axis=1), axis=0))

        if h < H - 1:
            below = tl.load(base + row_len + offsets, mask=inside, other=0).to(tl.int32)
            change = tl.sum(tl.sum(tl.abs(below - cur), axis=1), axis=0)
            tl.store(row_change_ptr + n * (H - 1) + h, change.to(tl.float32) / row_len)

        # every second column, channel-major (the sort below runs along the last axis)
        j = tl.arange(0, BLOCK_HALF)
        m = (W + 1) // 2
        half_offsets = c[:, None] + (2 * j)[None, :] * 3  # (4, BLOCK_HALF)
        used = (c[:, None] < 3) & (j[None, :] < m)
        top = tl.load(base + half_offsets, mask=used, other=0).to(tl.int32)

        # the exposure and colour checks' sums over this row's every second pixel
        column = j < m
        brightness = tl.sum(top, axis=0).to(tl.float32) / 3  # (BLOCK_HALF,)
        darkest = tl.min(tl.where(used, top, 255), axis=0)
        spread = tl.max(tl.where(used, top, 0), axis=0) - darkest
        stats = stats_ptr + (n * H + h) * 4
        tl.store(stats, tl.sum(tl.where(column, brightness, 0.0), axis=0))
        tl.store(stats + 1, tl.sum(tl.where(column, brightness * brightness, 0.0), axis=0))
        tl.store(stats + 2, tl.sum(tl.where(column & (darkest >= 250), 1.0, 0.0), axis=0))
        tl.store(stats + 3, tl.sum(tl.where(column, spread.to(tl.float32), 0.0), axis=0))

        if h < H - 2:
            low = tl.load(base + 2 * row_len + half_offsets, mask=used, other=0).to(tl.int32)
            steps = tl.where(used, low - top, _PAD)
            ordered = tl.sort(steps, dim=1)
            lower = (m - 1) // 2
            upper = m // 2
            a = tl.sum(tl.where(j[None, :] == lower, ordered, 0), axis=1)
            b = tl.sum(tl.where(j[None, :] == upper, ordered, 0), axis=1)
            median = tl.abs((a.to(tl.float32) + b.to(tl.float32)) / 2)
            median = tl.where(c < 3, median, 0.0)
            tl.store(shift_ptr + n * (H - 2) + h, tl.max(median, axis=0))

    @triton.jit
    def _column_profiles(x_ptr, column_change_ptr, H, W, BLOCK_W: tl.constexpr):
        n = tl.program_id(0)
        row_len = W * 3
        w = tl.arange(0, BLOCK_W)
        c = tl.arange(0, 4)
        offsets = w[:, None] * 3 + c[None, :]
        beside = (w[:, None] < W - 1) & (c[None, :] < 3)
        total = tl.zeros((BLOCK_W, 4), dtype=tl.int32)
        for h in range(0, H):
            base = x_ptr + n * H * row_len + h * row_len
            cur = tl.load(base + offsets, mask=beside, other=0).to(tl.int32)
            right = tl.load(base + offsets + 3, mask=beside, other=0).to(tl.int32)
            total += tl.abs(right - cur)
        per_column = tl.sum(total, axis=1).to(tl.float32) / (H * 3)
        tl.store(column_change_ptr + n * (W - 1) + w, per_column, mask=w < W - 1)


def garbled_profiles(images) -> dict:
    """The profiles of ``engine.qc.garbled.garbled_profiles`` for a uint8 NHWC torch tensor (on
    the GPU; on the CPU only under ``TRITON_INTERPRET=1``), as torch tensors on its device."""
    import torch

    if triton is None:
        raise RuntimeError("Triton is not installed: install the [gpu] extra")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected a uint8 NHWC RGB batch, got {images.dtype} {tuple(images.shape)}")
    x = images.contiguous()
    n, h, w, _ = x.shape
    if h < 3 or w < 2:
        raise ValueError(f"QC images of {h}x{w} px are too small for the garbled-crop profiles")
    device = x.device
    out = {
        "row_change": torch.empty((n, h - 1), dtype=torch.float32, device=device),
        "column_change": torch.empty((n, w - 1), dtype=torch.float32, device=device),
        "shared_shift": torch.empty((n, h - 2), dtype=torch.float32, device=device),
        "bumpiest": torch.empty((n, h), dtype=torch.int32, device=device),
        "level": torch.empty((n, h), dtype=torch.float32, device=device),
        "row_stats": torch.empty((n, h, 4), dtype=torch.float32, device=device),
    }
    block_w = _next_pow2(w)
    _row_profiles[(n, h)](x, out["row_change"], out["shared_shift"], out["bumpiest"], out["level"],
                          out["row_stats"], h, w,
                          BLOCK_W=block_w, BLOCK_HALF=_next_pow2((w + 1) // 2))
    _column_profiles[(n,)](x, out["column_change"], h, w, BLOCK_W=block_w)
    return out


def garbled_profiles_reference(images: np.ndarray) -> dict[str, np.ndarray]:
    """The NumPy reference: the engine's own CPU profiles, and ``row_stats`` (N, H, 4): per row,
    over its every second pixel, the sums of brightness, brightness squared, pixels clipped white
    (every channel >= 250) and chroma (largest - smallest channel), as engine/qc/exposure.py and
    colour.py define them."""
    from bmengine.engine.qc.garbled import garbled_profiles as numpy_profiles

    x = np.asarray(images)[:, :, ::2].astype(np.float32)
    brightness = (x[..., 0] + x[..., 1] + x[..., 2]) / 3
    stats = np.stack([brightness.sum(axis=2), (brightness * brightness).sum(axis=2),
                      (x.min(axis=3) >= 250).sum(axis=2), (x.max(axis=3) - x.min(axis=3)).sum(axis=2)], axis=2)
    return {**numpy_profiles(images), "row_stats": stats.astype(np.float32)}
