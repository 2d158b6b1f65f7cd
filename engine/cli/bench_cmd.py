"""``bmengine bench``: per-stage and end-to-end throughput on this machine (medians, ratios)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from bmengine.engine.assets import SAMPLE_SLIDES
from bmengine.engine.cli.console import esc
from bmengine.engine.cli.options import DEFAULT_MODEL_PATH, BatchOption, ModelOption, ThreadsOption


def bench(
    slides_dir: Annotated[Path, typer.Argument(help="Folder of slide stores.")] = SAMPLE_SLIDES,
    model: ModelOption = DEFAULT_MODEL_PATH,
    batch_size: BatchOption = 64,
    threads: ThreadsOption = 2,
    repeats: Annotated[int, typer.Option(help="Timed repeats per stage (after one warm-up).")] = 3,
    record: Annotated[Optional[Path], typer.Option(help="Write the JSON record here.")] = None,
) -> None:
    """Measure read, decode, inference and the whole run; print medians and ratios."""
    from rich.console import Console
    from rich.table import Table

    from bmengine.engine.bench import bench as run_bench

    result = run_bench(slides_dir, model, batch_size=batch_size, threads=threads, repeats=repeats)
    table = Table("stage", "crops", "median crops/s", title=esc(f"{result['machine']['cpu']} ({result['machine']['cores']} cores)"))
    for row in result["stages"]:
        table.add_row(esc(row["stage"]), str(row["items"]), f"{row['median_per_second']:.0f}")
    console = Console()
    console.print(table)
    for name, value in result["ratios"].items():
        console.print(f"{esc(name)}: {value:.2f}")
    if record:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"record: {esc(record)}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
