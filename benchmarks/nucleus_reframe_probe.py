"""Probe (issue 10): does framing every crop by its nucleus make a PBC model hold up in other labs?

Labs differ in magnification and field of view (PBC: 360 px around one cell; wbc_zheng tecom:
120 px, cellavision_blog: 300 px with many red cells), and the shipped model is brittle to scale.
Instead of teaching scale by augmentation, this probe removes it: each crop is re-framed around its
nucleus (the darkest, bluest blob nearest the centre), to a square ``--factor`` times the
nucleus's size, then resized to ``--size``. The same re-framing is applied to PBC (training and
validation) and to wbc_zheng (scoring), written as PNG copies under ``--out`` in the layout of
``../shared/data``, so the usual commands run on them unchanged:

    python benchmarks/nucleus_reframe_probe.py --out /tmp/reframed
    bmengine train /tmp/reframed/pbc --out runs/probe/reframed-basic ... (the proxy row's flags)
    bmengine export runs/probe/reframed-basic/best.pt --out runs/probe/reframed-basic/export/m.onnx --no-int8
    python benchmarks/cross_lab.py runs/probe/reframed-basic/export/m.onnx --data /tmp/reframed --out rows.json

A probe, not a product feature: if it helps, the re-framing belongs in the shared DALI pipeline.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
from crop_copies import DATA, copy_transformed
from PIL import Image
from scipy import ndimage


def nucleus_score(rgb: np.ndarray) -> np.ndarray:
    """Per pixel, how nucleus-like it is: dark and blue-violet. Red cells are dark in green too
    but red; background is light. (B - R) separates violet from red, darkness from background."""
    x = rgb.astype(np.float32)
    darkness = 255.0 - x.mean(axis=2)
    return darkness + (x[..., 2] - x[..., 0])


def _otsu(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=128)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    total = weight[-1]
    mean = np.cumsum(hist * centres)
    between = (mean[-1] * weight - mean * total) ** 2 / np.maximum(weight * (total - weight), 1)
    return float(centres[np.argmax(between[:-1])])


def nucleus_box(rgb: np.ndarray) -> tuple[float, float, float] | None:
    """(centre row, centre column, side) of the nucleus's bounding square, or None if none is found."""
    score = ndimage.gaussian_filter(nucleus_score(rgb), 1.5)
    mask = score > _otsu(score)
    mask = ndimage.binary_opening(mask, iterations=2)
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    h, w = mask.shape
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    centres = ndimage.center_of_mass(mask, labels, range(1, n + 1))
    # the nucleus: a large blob near the centre (lobes of one nucleus are merged below)
    dist = np.array([np.hypot(cy - h / 2, cx - w / 2) / max(h, w) for cy, cx in centres])
    keep = int(np.argmax(sizes / sizes.max() - dist))
    chosen = labels == keep + 1
    # lobes of a segmented neutrophil: every blob within reach of the chosen one joins it
    near = ndimage.binary_dilation(chosen, iterations=max(3, int(0.04 * max(h, w))))
    for i in range(n):
        if sizes[i] >= 0.15 * sizes[keep] and (near & (labels == i + 1)).any():
            chosen |= labels == i + 1
    rows, cols = np.nonzero(chosen)
    side = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
    return (rows.max() + rows.min()) / 2, (cols.max() + cols.min()) / 2, float(side)


def reframe(rgb: np.ndarray, factor: float, size: int) -> np.ndarray:
    """The crop re-framed around its nucleus (the whole crop when no nucleus is found)."""
    box = nucleus_box(rgb)
    h, w = rgb.shape[:2]
    if box is None:
        return np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
    cy, cx, side = box
    half = factor * side / 2
    border = np.median(np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]), axis=0).astype(np.uint8)
    pad = int(np.ceil(max(half - cy, half - cx, cy + half - h, cx + half - w, 0))) + 1
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="constant")
    padded[:pad], padded[-pad:], padded[:, :pad], padded[:, -pad:] = border, border, border, border
    top, left = int(round(cy - half)) + pad, int(round(cx - half)) + pad
    span = int(round(2 * half))
    window = padded[top : top + span, left : left + span]
    return np.asarray(Image.fromarray(window).resize((size, size), Image.BICUBIC))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--factor", type=float, default=2.6, help="frame side / nucleus side")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    copy_transformed(args.data, args.out, ("pbc", "wbc_zheng"), partial(reframe, factor=args.factor, size=args.size),
                     workers=args.workers)


if __name__ == "__main__":
    main()
