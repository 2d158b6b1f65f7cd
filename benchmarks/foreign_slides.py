"""Another lab's crops as slides, through `bmengine run`: what a new user would see.

wbc_zheng becomes three slides (``bmengine ingest --manifest`` with a ``label`` column):
``cellavision_blog`` (100 crops), ``tecom`` (300) and a PBC control (200 crops, every 60th file of
PBC). Then ``bmengine run`` with MODEL, and per slide: the share flagged ``unknown``, whether the
slide got a domain warning, the accuracy over all crops, and the accuracy of the crops it counted.
Run it for every new default (README, "Can I trust the counts on my lab's slides?").

Usage: python benchmarks/foreign_slides.py MODEL.onnx --work DIR [--json OUT.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from bmengine.engine.outputs.differential import cell_masks

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
BMENGINE = [sys.executable, "-m", "bmengine.engine.cli.app"]


def manifest(work: Path) -> Path:
    """path,slide_id,label for the three slides (paths absolute: the CSV sits in WORK)."""
    rows = [(DATA / "wbc_zheng" / r["file"], r["source"], r["class"])
            for r in csv.DictReader(open(DATA / "wbc_zheng" / "manifest.csv"))]
    pbc = sorted((DATA / "pbc").rglob("*.jpg"))
    rows += [(f, "pbc_control", f.parent.name) for f in pbc[::60]]
    out = work / "manifest.csv"
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "slide_id", "label"])
        writer.writerows((str(p), slide, label) for p, slide, label in rows)
    return out


def _bmengine(*args) -> None:
    done = subprocess.run(BMENGINE + [str(a) for a in args], capture_output=True, text=True,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    if done.returncode not in (0, 1):
        raise SystemExit(f"bmengine {args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")


def summarise(out: Path) -> dict:
    """Per slide: crops, unknown share, domain warning, accuracy of all crops and of the counted ones."""
    run = json.loads((out / "run.json").read_text())
    differential = pd.read_csv(out / "differential.csv").set_index("slide_id")
    rows = {}
    for slide in sorted(differential.index):
        cells = pd.read_parquet(out / slide / "cells.parquet")
        right = (cells["label"].astype(str) == cells["predicted"].astype(str)).to_numpy()
        counted = cell_masks(cells)[2]
        warning = differential.loc[slide, "domain_warning"]
        rows[slide] = {"crops": len(cells), "unknown_share": float(cells["qc_flags"].fillna("").str.contains("unknown").mean()),
                       "domain_warning": bool(isinstance(warning, str) and warning.strip()),
                       "accuracy_all": float(right.mean()), "counted": int(counted.sum()),
                       "accuracy_counted": float(right[counted].mean()) if counted.any() else None}
    return {"model": run["model"], "slides": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    slides = args.work / "slides"
    if not slides.is_dir():
        _bmengine("ingest", "--manifest", manifest(args.work), "--out", slides)
    _bmengine("run", slides, "--model", args.model, "--out", args.work / "out")
    result = summarise(args.work / "out")
    for slide, r in result["slides"].items():
        counted = "—" if r["accuracy_counted"] is None else f"{r['accuracy_counted']:.2f} of {r['counted']}"
        print(f"{slide}: {r['crops']} crops, {r['unknown_share']:.1%} unknown, warning {'yes' if r['domain_warning'] else 'no'}, "
              f"accuracy {r['accuracy_all']:.2f} (counted crops {counted})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
