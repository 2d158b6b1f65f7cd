"""Archive-runner benchmark (issue 12, item 5): every ratio measured in one run on one machine.

Usage (idle machine, the [train] extra for the naive baseline):
    python benchmarks/archive_runner.py --model engine/assets/models/X_int8.onnx --work /tmp/archive-bench \
        --json benchmarks/results/DATE-MACHINE-archive-runner.json

Rows, all through the real CLI (`bmengine run`, a fresh process each, start-up included):
- **one slide**: N PBC crops as one store;
- **archive**: the same N crops as N/200 stores of 200 cells (a marrow slide's size);
- **archive, --workers 1 / --workers 2 --threads 1**: the Dask runner's local worker processes;
- **backend-only ceiling**: decode + infer of the same crops in one process (engine.bench's stages,
  no store, no write), the most the run could reach;
- **naive lab script**: PIL decode + resize to 224, PyTorch eager fp32 RegNetX-3.2GF, batch 32, on
  the first `--naive-crops` crops (start-up included), the way a lab would script it;
- **peak RSS**: `bmengine run` on 10 and on 500 stores of `--rss-cells` cells (the process's ru_maxrss).
Crops/s of a row = crops / wall seconds of its command (start-up, planning and the report
included); ``run_json_crops_per_second`` is what the run itself records: crops / seconds of its
classifying phase (runner start to last slide written). Medians of `--repeats`; the rows take turns
(repeat 1 of every row, then repeat 2, ...), so a slow spell of this shared machine hits all alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PBC = REPO.parent / "shared" / "data" / "pbc"
BMENGINE = [sys.executable, "-m", "bmengine.engine.cli.app"]


def pbc_crops(n: int) -> list[Path]:
    """n crops, round-robin over the classes in sorted order (a stable, mixed sample)."""
    per_class = [sorted((PBC / c).glob("*.jpg")) for c in sorted(p.name for p in PBC.iterdir() if p.is_dir())]
    out, i = [], 0
    while len(out) < n:
        for files in per_class:
            if i < len(files) and len(out) < n:
                out.append(files[i])
        i += 1
    return out


def build_archive(crops: list[Path], per_slide: int, root: Path) -> Path:
    """``root/slides``: stores of ``per_slide`` crops each, through `bmengine ingest` (links, no copies)."""
    folders = root / "crops"
    shutil.rmtree(root, ignore_errors=True)
    for i in range(0, len(crops), per_slide):
        folder = folders / f"slide{i // per_slide:05d}"
        folder.mkdir(parents=True)
        for crop in crops[i : i + per_slide]:
            (folder / f"{crop.parent.name}_{crop.name}").symlink_to(crop)
    subprocess.run(BMENGINE + ["ingest", str(folders), "--out", str(root / "slides")], check=True,
                   capture_output=True)
    return root / "slides"


def timed_run(args: list[str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in MB) of one CLI process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) not in (0, 3):
        raise RuntimeError(f"{' '.join(args)} exited {os.waitstatus_to_exitcode(status)}")
    return seconds, usage.ru_maxrss // 1024


def run_once(slides: Path, model: Path, out: Path, *extra: str) -> tuple[float, int, float]:
    """(wall seconds, peak RSS MB, the crops/s its run.json records) of one `bmengine run`."""
    shutil.rmtree(out, ignore_errors=True)
    seconds, rss = timed_run(BMENGINE + ["run", str(slides), "--model", str(model), "--out", str(out), *extra])
    return seconds, rss, json.loads((out / "run.json").read_text())["crops_per_second"]


def run_rows(plans: dict[str, tuple], model: Path, out: Path, repeats: int) -> dict[str, dict]:
    """Every row ``name -> (slides, *extra)``, the rows taking turns within each repeat."""
    runs: dict[str, list[tuple[float, int, float]]] = {name: [] for name in plans}
    for _ in range(repeats):
        for name, (slides, *extra) in plans.items():
            runs[name].append(run_once(slides, model, out, *extra))
    return {name: {"seconds": [round(s, 2) for s, _, _ in got],
                   "median_seconds": round(statistics.median(s for s, _, _ in got), 2),
                   "run_json_crops_per_second": statistics.median(r for _, _, r in got),
                   "peak_rss_mb": max(m for _, m, _ in got)} for name, got in runs.items()}


def ceiling(crops: list[Path], model: Path, batch_size: int, threads: int, repeats: int) -> dict:
    """Decode + infer of the crops in this process, batches prepared in memory: no store, no writes."""
    from bmengine.engine.pipeline.engine import Engine, EngineSpec

    engine = Engine.load(EngineSpec(model, batch_size=batch_size, threads=threads))
    data = [c.read_bytes() for c in crops]
    batches = [data[i : i + batch_size] for i in range(0, len(data), batch_size)]

    def once() -> float:
        t0 = time.perf_counter()
        for batch in batches:
            engine.backend.infer(engine.pipeline.decode(batch).pixels)
        return time.perf_counter() - t0

    once()  # warm-up
    seconds = [once() for _ in range(repeats)]
    return {"seconds": [round(s, 2) for s in seconds], "median_seconds": round(statistics.median(seconds), 2)}


NAIVE = r"""
import sys, time
t0 = time.perf_counter()
import torch, timm
from PIL import Image
import numpy as np
torch.set_num_threads(int(sys.argv[2]))
files = [l.strip() for l in open(sys.argv[1])]
model = timm.create_model("regnetx_032", pretrained=False, num_classes=8).eval()
mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
with torch.no_grad():
    for i in range(0, len(files), 32):
        batch = [(np.asarray(Image.open(f).convert("RGB").resize((224, 224)), np.float32) / 255 - mean) / std
                 for f in files[i:i + 32]]
        model(torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2).contiguous())
print(time.perf_counter() - t0)
"""


def naive(crops: list[Path], threads: int, work: Path) -> dict:
    listing = work / "naive.txt"
    listing.write_text("\n".join(map(str, crops)) + "\n")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", NAIVE, str(listing), str(threads)], check=True, capture_output=True)
    return {"seconds": round(time.perf_counter() - t0, 2), "crops": len(crops)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/archive-bench"))
    parser.add_argument("--crops", type=int, default=4000)
    parser.add_argument("--naive-crops", type=int, default=0, help="crops for the naive script (0: all of them)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="crops per batch (default: what `bmengine run` chooses for the model)")
    parser.add_argument("--rss-cells", type=int, default=10, help="cells per slide of the peak-RSS archives")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from bmengine.engine.backends import default_batch_size
    from bmengine.engine.bench import machine_info

    batch_size = args.batch_size or default_batch_size(args.model)  # the ceiling runs at the run's batch
    batch_flag = ("--batch-size", str(args.batch_size)) if args.batch_size else ()

    crops = pbc_crops(args.crops)
    one = build_archive(crops, len(crops), args.work / "one")
    archive = build_archive(crops, 200, args.work / "archive")
    small10 = build_archive(pbc_crops(10 * args.rss_cells), args.rss_cells, args.work / "rss10")
    small500 = build_archive(pbc_crops(500 * args.rss_cells), args.rss_cells, args.work / "rss500")
    out = args.work / "out"
    n, rows = len(crops), {}
    common = ("--threads", str(args.threads), *batch_flag)
    rows.update(run_rows({
        "one slide": (one, *common),
        "archive of 200-cell slides": (archive, *common),
        "archive, --workers 1": (archive, "--workers", "1", *common),
        "archive, --workers 2 --threads 1": (archive, "--workers", "2", "--threads", "1", *batch_flag),
    }, args.model, out, args.repeats))
    rows["backend-only ceiling"] = ceiling(crops, args.model, batch_size, args.threads, args.repeats)
    for row in rows.values():
        row["crops_per_second"] = round(n / row["median_seconds"], 1)
    rss_rows = run_rows({f"10 slides x {args.rss_cells} cells": (small10, *common),
                         f"500 slides x {args.rss_cells} cells": (small500, *common)}, args.model, out, 1)
    rss = {name: row["peak_rss_mb"] for name, row in rss_rows.items()}
    try:
        lab = naive(crops[: args.naive_crops or len(crops)], args.threads, args.work)
        lab["crops_per_second"] = round(lab["crops"] / lab["seconds"], 1)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        lab = {"error": f"needs the [train] extra: {exc}"}
    rate = {name: row["crops_per_second"] for name, row in rows.items()}
    record = {
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "model": str(args.model), "crops": n,
        "settings": {"threads": args.threads, "batch_size": batch_size, "batch_size_given": args.batch_size is not None,
                     "repeats": args.repeats},
        "rows": rows, "peak_rss_mb": rss, "naive_lab_script": lab,
        "ratios": {
            "archive / one slide": round(rate["archive of 200-cell slides"] / rate["one slide"], 3),
            "archive / backend-only ceiling": round(rate["archive of 200-cell slides"] / rate["backend-only ceiling"], 3),
            "one slide / backend-only ceiling": round(rate["one slide"] / rate["backend-only ceiling"], 3),
            "archive / one slide, classifying phase (run.json)": round(
                rows["archive of 200-cell slides"]["run_json_crops_per_second"]
                / rows["one slide"]["run_json_crops_per_second"], 3),
            "archive / backend-only ceiling, classifying phase (run.json)": round(
                rows["archive of 200-cell slides"]["run_json_crops_per_second"] / rate["backend-only ceiling"], 3),
            "2 workers / 1 worker": round(rate["archive, --workers 2 --threads 1"] / rate["archive, --workers 1"], 3),
            "run (archive) / naive lab script": (round(rate["archive of 200-cell slides"] / lab["crops_per_second"], 2)
                                                 if "crops_per_second" in lab else None),
        },
    }
    text = json.dumps(record, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
