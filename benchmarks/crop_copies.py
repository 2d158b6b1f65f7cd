"""Transformed copies of ../shared/data for the cross-lab probes, in the same layout, so the usual
commands (``bmengine train``, ``benchmarks/cross_lab.py --data``) run on them unchanged.

Each probe supplies a transform of one RGB crop (a picklable callable: a module-level function,
or ``functools.partial`` of one); this module walks the subsets, runs the transform in worker
processes, names every crop that fails instead of stopping, and rewrites the wbc_zheng manifest
when the copies change suffix.
"""

from __future__ import annotations

import csv
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

Transform = Callable[[np.ndarray], np.ndarray]


def _one(job: tuple[str, str, Transform, dict]) -> str | None:
    source, target, transform, save_options = job
    try:
        Image.fromarray(transform(np.asarray(Image.open(source).convert("RGB")))).save(target, **save_options)
        return None
    except Exception as exc:  # a probe: name the file and go on
        return f"{source}: {exc}"


def copy_transformed(data: Path, out: Path, subsets: tuple[str, ...], transform: Transform,
                     suffix: str | None = ".png", save_options: dict | None = None, workers: int = 2) -> int:
    """Every crop of ``subsets`` (expert masks left out) through ``transform`` into ``out``; with
    ``suffix``, copies get that suffix (and the wbc_zheng manifest follows), else keep their own.
    Prints a summary and the first problems; returns the number of crops."""
    jobs = []
    for subset in subsets:
        for source in sorted((data / subset).rglob("*")):
            if source.suffix.lower() in (".jpg", ".png") and "_masks" not in source.parts:
                target = out / source.relative_to(data)
                target = target.with_suffix(suffix) if suffix else target
                target.parent.mkdir(parents=True, exist_ok=True)
                jobs.append((str(source), str(target), transform, save_options or {}))
    with ProcessPoolExecutor(workers) as pool:
        problems = [p for p in pool.map(_one, jobs, chunksize=64) if p]
    if "wbc_zheng" in subsets:
        _rewrite_manifest(data / "wbc_zheng" / "manifest.csv", out / "wbc_zheng" / "manifest.csv", suffix)
    print(f"{len(jobs)} crops written into {out}; {len(problems)} problems")
    for problem in problems[:10]:
        print(" ", problem)
    return len(jobs)


def _rewrite_manifest(source: Path, target: Path, suffix: str | None) -> None:
    rows = list(csv.DictReader(open(source)))
    with open(target, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "file": str(Path(row["file"]).with_suffix(suffix)) if suffix else row["file"]})
