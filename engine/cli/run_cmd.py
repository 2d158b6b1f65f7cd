"""``bmengine run``: classify every slide store in a folder and write differentials and a report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bmengine.engine.cli.options import DEFAULT_MODEL_PATH, BatchOption, ModelOption, ThreadsOption


class _RichProgress:
    """Draws the run's progress: one bar for all crops, the current slide in its label."""

    def __init__(self, progress, console):
        self.progress, self.console, self.task = progress, console, None

    def slides_found(self, n_slides, n_crops):
        self.task = self.progress.add_task(f"{n_slides} slides", total=n_crops)

    def slide_started(self, slide_id, n_crops):
        self.progress.update(self.task, description=f"{slide_id} ({n_crops} crops)")

    def crops_done(self, n):
        self.progress.advance(self.task, n)

    def slide_finished(self, status):
        style = {"ok": "green", "skipped": "cyan", "failed": "red"}[status.status]
        extra = f" — {status.error}" if status.error else (f", {status.n_errors} unreadable crops" if status.n_errors else "")
        word = "already done, skipped" if status.status == "skipped" else status.status
        self.console.print(f"[{style}]{status.slide_id}[/]: {word} ({status.n_crops} crops, {status.seconds:.1f}s){extra}")


def run(
    slides_dir: Annotated[Path, typer.Argument(help="Folder of slide stores (*.zarr, see `bmengine ingest`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; re-running resumes it.")] = Path("bmengine-out"),
    model: ModelOption = DEFAULT_MODEL_PATH,
    batch_size: BatchOption = 64,
    threads: ThreadsOption = 2,
    scheduler: Annotated[Optional[str], typer.Option(help="Dask scheduler address; default: a local cluster.")] = None,
    device_id: Annotated[int, typer.Option(help="GPU to use for .plan models.")] = 0,
) -> None:
    """Classify every cell of every slide; write cells tables, differentials, plots, report, run.json.

    Exit status: 0 all well; 1 a slide failed; 2 nothing ran (bad model or folder); 3 some crops
    could not be decoded (recorded as error rows).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from bmengine.engine.model.card import ModelCardError
    from bmengine.engine.pipeline.run import RunConfig, run_engine
    from bmengine.engine.store import SlideStoreError

    console = Console(stderr=True)
    cfg = RunConfig(slides_dir=slides_dir, model=model, out_dir=out, batch_size=batch_size, threads=threads,
                    scheduler=scheduler, device_id=device_id)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("crops"),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=False) as bars:
            result = run_engine(cfg, _RichProgress(bars, console))
    except (ModelCardError, SlideStoreError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    ok = sum(s.status != "failed" for s in result.statuses)
    rate = f"{result.crops_per_second:.0f} crops/s" if result.crops_per_second else "nothing left to classify"
    console.print(f"{ok}/{len(result.statuses)} slides done ({rate})")
    if result.report:
        console.print(f"report: {result.report}")
    console.print(f"differential: {out / 'differential.csv'}\nrun record: {result.run_record}")
    raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
