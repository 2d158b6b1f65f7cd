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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def central(image: Image.Image, fraction: float) -> Image.Image:
    """The central square of side ``fraction`` x the shorter side."""
    width, height = image.size
    side = round(min(width, height) * fraction)
    left, top = (width - side) // 2, (height - side) // 2
    return image.crop((left, top, left + side, top + side))


def _one(job: tuple[str, str, float]) -> str | None:
    source, target, fraction = job
    try:
        central(Image.open(source).convert("RGB"), fraction).save(target, quality=95)
        return None
    except Exception as exc:  # a probe: name the file and go on
        return f"{source}: {exc}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fraction", type=float, default=0.5, help="side of the kept centre / side of the crop")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    jobs = []
    for source in sorted((args.data / "pbc").rglob("*.jpg")):
        target = args.out / source.relative_to(args.data)
        target.parent.mkdir(parents=True, exist_ok=True)
        jobs.append((str(source), str(target), args.fraction))
    shutil.copy(args.data / "pbc" / "manifest.csv", args.out / "pbc" / "manifest.csv")
    if not (args.out / "wbc_zheng").exists():
        (args.out / "wbc_zheng").symlink_to(args.data / "wbc_zheng")
    with ProcessPoolExecutor(args.workers) as pool:
        problems = [p for p in pool.map(_one, jobs, chunksize=64) if p]
    print(f"{len(jobs)} PBC crops cut to their central {args.fraction:.2f} into {args.out}; {len(problems)} problems")
    for problem in problems[:10]:
        print(" ", problem)


if __name__ == "__main__":
    main()
