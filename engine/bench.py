"""Throughput of each engine stage and of the whole run, measured in one process, reported as
medians over repeats (these machines are noisy) plus ratios between stages.

Not a test: nothing here passes or fails. ``bmengine bench`` prints the table and writes a JSON
record naming the machine it came from.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable


@dataclass
class StageResult:
    stage: str
    items: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median_per_second(self) -> float:
        return self.items / statistics.median(self.seconds)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    from bmengine.engine.backends.x86_int8 import int8_dot_product
    from bmengine.engine.doctor import run_checks

    gpu = next((c.detail for c in run_checks() if c.name.startswith("cuda") and c.ok), None)
    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "int8_dot_product": int8_dot_product(), "gpu": gpu,
            "platform": platform.platform(), "python": platform.python_version()}


def machine_words() -> str:
    """The machine in a few words, as tables and model cards print it: CPU model and core count
    (no doctor checks: the trainer and every ablation row call this)."""
    return f"{_cpu_name()} ({os.cpu_count()} cores)"


def _time(fn: Callable[[], None], repeats: int) -> list[float]:
    fn()  # warm-up: pipeline build, ORT session arenas, page cache
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bench(slides_dir: Path, model: Path, batch_size: int = 64, threads: int = 2, repeats: int = 3,
          max_crops: int = 1024) -> dict:
    from bmengine.engine.pipeline.engine import Engine, EngineSpec
    from bmengine.engine.pipeline.reader import LocalCropReader
    from bmengine.engine.pipeline.run import RunConfig, run_engine
    from bmengine.engine.store import SlideStore, find_slide_stores

    store = SlideStore.open(find_slide_stores(slides_dir)[0])
    n = min(store.n_cells, max_crops)
    engine = Engine.load(EngineSpec(Path(model), batch_size=batch_size, threads=threads))  # what `run` sets up
    backend, pipeline, prep = engine.backend, engine.pipeline, engine.card.preprocessing
    crops = store.read_crops(0, n)
    batches = [crops[i : i + batch_size] for i in range(0, n, batch_size)]
    decoded = [pipeline.decode(b).pixels for b in batches]
    results = []

    reader = LocalCropReader()  # what the local runner reads with
    try:
        results.append(StageResult("read (zarr)", n, _time(
            lambda: [None for _ in reader.iter_batches(store, batch_size, stop=n)], repeats)))
    finally:
        reader.close()
    results.append(StageResult("decode+resize+normalise (DALI cpu)", n, _time(
        lambda: [pipeline.decode(b) for b in batches], repeats)))
    results.append(StageResult(f"infer ({backend.name}, {backend.card.precision})", n, _time(
        lambda: [backend.infer(d) for d in decoded], repeats)))

    total = sum(SlideStore.open(p).n_cells for p in find_slide_stores(slides_dir))
    e2e = StageResult("end to end (bmengine run)", total)

    def full_run() -> None:
        out = Path(tempfile.mkdtemp(prefix="bmengine-bench-"))
        try:
            run_engine(RunConfig(slides_dir, model, out, batch_size=batch_size, threads=threads))
        finally:
            shutil.rmtree(out, ignore_errors=True)

    e2e.seconds = _time(full_run, repeats)
    results.append(e2e)
    slowest = min(r.median_per_second for r in results[:-1])
    return {
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "model": {"path": str(model), "sha256": backend.card.weights_sha256, "precision": backend.card.precision,
                  "input": prep.crop},
        "settings": {"batch_size": batch_size, "threads": threads, "repeats": repeats, "slides_dir": str(slides_dir)},
        "stages": [{"stage": r.stage, "items": r.items, "median_per_second": round(r.median_per_second, 1),
                    "seconds": [round(s, 4) for s in r.seconds]} for r in results],
        "ratios": {
            "end_to_end / slowest stage": round(e2e.median_per_second / slowest, 3),
            "end_to_end / serial sum of stages": round(
                e2e.median_per_second * sum(1 / r.median_per_second for r in results[:-1]), 3),
        },
    }
