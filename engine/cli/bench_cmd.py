"""``bmengine bench``: per-stage and end-to-end throughput on this machine (medians, ratios)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from bmengine.engine.assets import SAMPLE_SLIDES
from bmengine.engine.cli.console import esc
from bmengine.engine.cli.options import DEFAULT_MODEL_PATH, InferenceBatchOption, ModelOption, ThreadsOption


def bench(
    slides_dir: Annotated[Path, typer.Argument(help="Folder of slide stores.")] = SAMPLE_SLIDES,
    model: ModelOption = DEFAULT_MODEL_PATH,
    batch_size: InferenceBatchOption = None,
    threads: ThreadsOption = 2,
    repeats: Annotated[int, typer.Option(help="Timed repeats per stage (after one warm-up).")] = 3,
    record: Annotated[Optional[Path], typer.Option(help="Write the JSON record here.")] = None,
    batch_sizes: Annotated[str, typer.Option(help="GPU (.plan) only: the batch sizes of the sweep, up to the "
                                             "plan's maximum.")] = "64,128,256,512",
    gpus: Annotated[Optional[str], typer.Option(help="GPU (.plan) only: the GPUs of the node row, 'all' (default) "
                                                "or ids such as 0,1.")] = None,
    gpu_crops: Annotated[int, typer.Option(help="GPU (.plan) only: crops per sweep row (repeated from the "
                                           "archive if it holds fewer).")] = 8192,
) -> None:
    """Measure read, decode, inference and the whole run; print medians and ratios. With a .plan,
    also the per-GPU record: batch-size sweep, latency percentiles, GPU busy %, model-only
    ceiling, and every GPU of the node through the runner."""
    from rich.console import Console
    from rich.table import Table

    from bmengine.engine.backends import backend_for, default_batch_size
    from bmengine.engine.bench import bench as run_bench

    batch_size = batch_size or default_batch_size(model)  # what `bmengine run` would use
    result = run_bench(slides_dir, model, batch_size=batch_size, threads=threads, repeats=repeats)
    if backend_for(Path(model))[0] == "tensorrt":
        from bmengine.engine.bench_gpu import archive_crops, gpu_bench
        from bmengine.engine.backends.devices import parse_gpu_list

        sizes = tuple(int(v) for v in batch_sizes.split(",") if v.strip())
        result["per_gpu"] = gpu_bench(slides_dir, Path(model), archive_crops(slides_dir, gpu_crops), sizes,
                                      repeats, parse_gpu_list(gpus) if gpus else ())
    table = Table("stage", "crops", "median crops/s", title=esc(f"{result['machine']['cpu']} ({result['machine']['cores']} cores)"))
    for row in result["stages"]:
        table.add_row(esc(row["stage"]), str(row["items"]), f"{row['median_per_second']:.0f}")
    console = Console()
    console.print(table)
    for name, value in result["ratios"].items():
        console.print(f"{esc(name)}: {value:.2f}")
    if "per_gpu" in result:
        _print_gpu(console, result["per_gpu"])
    if record:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"record: {esc(record)}")


def _print_gpu(console, record: dict) -> None:
    from rich.table import Table

    gpu = record["gpu"]
    title = (f"{gpu['gpu']} (sm {gpu['compute_capability']}, driver {gpu['driver']}, CUDA {gpu['cuda_runtime']}, "
             f"TensorRT {gpu['tensorrt']})")
    table = Table("batch", "crops/s", "p50 ms", "p95 ms", "p99 ms", "infer ms (device)", "model-only crops/s",
                  "GPU busy %", "memory MB", title=esc(title))
    for row in record["sweep"]:
        lat, use = row["latency"], row["gpu"]
        table.add_row(str(row["batch_size"]), f"{row['crops_per_second']:.0f}", f"{lat['p50_ms']:.2f}",
                      f"{lat['p95_ms']:.2f}", f"{lat['p99_ms']:.2f}", str(row["infer_device_ms_median"]),
                      f"{row['model_only_crops_per_second']:.0f}", str(use.get("gpu_busy_mean_pct")),
                      str(use.get("memory_used_max_mb")))
    console.print(table)
    node = record["node"]
    console.print(f"node: {len(node['gpus'])} GPU(s) through the runner at batch {node['batch_size']}: "
                  f"{node['crops_per_second']:.0f} crops/s, {node['crops_per_second_per_gpu']:.0f} per GPU")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
