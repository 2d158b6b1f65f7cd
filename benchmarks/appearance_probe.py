"""Probe (issue 10): does a colour-free view of each crop make a PBC model hold up in other labs?

tecom's rapid stain turns nuclei red-brown on a yellow background; a PBC model calls most of its
cells eosinophils, and hue/HED jitter in training did not reach that far. This probe removes colour
at the door instead: every crop (PBC for training and validation, wbc_zheng for scoring) is
turned into ``--view``, written as PNG copies under ``--out`` in the layout of ``../shared/data``:

- ``gray``: luma (ITU-R BT.601), replicated to three channels;
- ``gray-stretch``: luma stretched so its 1st and 99th percentiles map to 0 and 255 (a camera's
  exposure and the stain's strength differ between labs).

    python benchmarks/appearance_probe.py --view gray-stretch --out /tmp/gray
    bmengine train /tmp/gray/pbc --out runs/probe/gray-scale ... (the proxy row's flags)
    python benchmarks/cross_lab.py runs/probe/gray-scale/export/m.onnx --data /tmp/gray --out rows.json

A probe, not a product feature: if it helps, the view belongs in the shared DALI pipeline.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
from crop_copies import DATA, copy_transformed


def gray(rgb: np.ndarray) -> np.ndarray:
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat(luma[..., None], 3, axis=2).round().astype(np.uint8)


def gray_stretch(rgb: np.ndarray) -> np.ndarray:
    luma = gray(rgb)[..., 0].astype(np.float32)
    low, high = np.percentile(luma, (1, 99))
    out = (luma - low) * (255.0 / max(high - low, 1.0))
    return np.repeat(out.clip(0, 255)[..., None], 3, axis=2).round().astype(np.uint8)


VIEWS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"gray": gray, "gray-stretch": gray_stretch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--view", choices=sorted(VIEWS), default="gray-stretch")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    copy_transformed(args.data, args.out, ("pbc", "wbc_zheng"), VIEWS[args.view], workers=args.workers)


if __name__ == "__main__":
    main()
