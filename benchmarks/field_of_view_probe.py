"""Probe (issue 10): does training on a tighter field of view make a PBC model hold up in other labs?

PBC crops show about four lymphocyte diameters of smear around each cell (360 px, many red cells);
the other labs' crops in ``wbc_zheng`` are framed about twice as tight (the expert masks give a
lymphocyte 0.47 of the frame in cellavision_blog and 0.50 in tecom). Shrinking those crops to PBC's
framing needs padding the model has never seen (measured: accuracy collapses). This probe goes the
other way: it trains on the central ``--fraction`` of every PBC crop, so that PBC cells fill the
frame as the other labs' do, and scores wbc_zheng crops whole. It writes PBC copies (JPEG, quality
95) under ``--out`` in the layout of ``../shared/data`` and links wbc_zheng unchanged:

    python benchmarks/field_of_view_probe.py --fraction 0.5 --out /tmp/fov50
    bmengine train /tmp/fov50/pbc --out runs/probe/fov50-basic ... (the proxy row's flags)
    bmengine export runs/probe/fov50-basic/checkpoints/best.pt --out runs/probe/fov50-basic/export/m.onnx --no-int8
    python benchmarks/cross_lab.py runs/probe/fov50-basic/export/m.onnx --data /tmp/fov50 --out rows.json

A probe, not a product feature: if it helps, the field of view belongs in the card's preprocessing
and the shared DALI pipeline.
"""

from __future__ import annotations

import argparse
import shutil
from functools import partial
from pathlib import Path

import numpy as np
from crop_copies import DATA, copy_transformed


def central(rgb: np.ndarray, fraction: float) -> np.ndarray:
    """The central square of side ``fraction`` x the shorter side."""
    height, width = rgb.shape[:2]
    side = round(min(width, height) * fraction)
    left, top = (width - side) // 2, (height - side) // 2
    return rgb[top : top + side, left : left + side]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fraction", type=float, default=0.5, help="side of the kept centre / side of the crop")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    copy_transformed(args.data, args.out, ("pbc",), partial(central, fraction=args.fraction), suffix=None,
                     save_options={"quality": 95}, workers=args.workers)
    shutil.copy(args.data / "pbc" / "manifest.csv", args.out / "pbc" / "manifest.csv")
    if not (args.out / "wbc_zheng").exists():
        (args.out / "wbc_zheng").symlink_to(args.data / "wbc_zheng")


if __name__ == "__main__":
    main()
