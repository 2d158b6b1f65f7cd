"""``bmengine run``: classify every slide store in a folder and write differentials and a report."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from bmengine.engine.cli.console import LOG_NAME, esc, route_noise_to_log, writable_dir_problem
from bmengine.engine.cli.options import (
    DEFAULT_MODEL_PATH,
    InferenceBatchOption,
    LabelMapOption,
    MaxCropBytesOption,
    MaxCropPixelsOption,
    ModelOption,
    ThreadsOption,
)
from bmengine.engine.store.limits import DEFAULT_MAX_CROP_BYTES, DEFAULT_MAX_CROP_PIXELS

EXIT_USAGE = 2


class _RichProgress:
    """Draws the run's progress: one bar for all crops, the current slide in its label."""

    def __init__(self, progress, console):
        self.progress, self.console, self.task = progress, console, None

    def slides_found(self, n_slides, n_crops):
        self.task = self.progress.add_task(f"{n_slides} slides", total=n_crops)

    def slide_started(self, slide_id, n_crops):
        self.progress.update(self.task, description=f"{esc(slide_id)} ({n_crops} crops)")

    def crops_done(self, n):
        self.progress.advance(self.task, n)

    def warning(self, text):
        self.console.print(f"[yellow]warning:[/] {esc(text)}")

    def slide_finished(self, status):
        style = {"ok": "green", "skipped": "cyan", "failed": "red"}[status.status]
        if status.error:
            extra = f" — {esc(status.error)}"
        elif status.n_errors:
            extra = f", {status.n_errors} unreadable crops"
        else:
            extra = ""
        word = "already done, skipped" if status.status == "skipped" else status.status
        if status.status == "ok" and status.redo_reason:
            word += f" (redone: {esc(status.redo_reason)})"
        self.console.print(f"[{style}]{esc(status.slide_id)}[/]: {word} "
                           f"({status.n_crops} crops, {status.seconds:.1f}s){extra}")
        if status.domain_warning:
            self.console.print(f"    [bold yellow]domain warning:[/] {esc(status.domain_warning)}")
        for example in status.error_examples:
            self.console.print(f"    {esc(example)}")
        if status.n_errors > len(status.error_examples):
            self.console.print(f"    … and {status.n_errors - len(status.error_examples)} more "
                               "(all in cells.parquet, column error)")


def run(
    slides_dir: Annotated[Path, typer.Argument(help="Folder of slide stores (*.zarr, see `bmengine ingest`).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder; re-running resumes it.")] = Path("bmengine-out"),
    model: ModelOption = DEFAULT_MODEL_PATH,
    batch_size: InferenceBatchOption = None,
    threads: ThreadsOption = 2,
    workers: Annotated[int, typer.Option(
        min=0, help="Classify slides in this many local worker processes (a Dask cluster), each with its own "
                    "model; 0: in this process.")] = 0,
    gpus: Annotated[Optional[str], typer.Option(
        help="'all' or a list such as 0,1: one worker process per GPU, each pinned to its device.")] = None,
    scheduler: Annotated[Optional[str], typer.Option(
        help="Address of a running Dask scheduler: its workers classify whole slides (they must see the "
             "same slide and output folders).")] = None,
    device_id: Annotated[int, typer.Option(min=0, help="GPU to use for .plan models.")] = 0,
    max_crop_bytes: MaxCropBytesOption = DEFAULT_MAX_CROP_BYTES,
    max_crop_pixels: MaxCropPixelsOption = DEFAULT_MAX_CROP_PIXELS,
    label_map: LabelMapOption = None,
    shard: Annotated[Optional[str], typer.Option(
        help="i/n: only every n-th store from the i-th (0-based, sorted by name), for array jobs. Shards "
             "share one --out; they write run.shard-i-of-n.json, and `bmengine report OUT` merges them.")] = None,
) -> None:
    """Classify every cell of every slide; write cells tables, differentials, plots, report, run.json.

    Exit status: 0 all well; 1 a slide failed; 2 nothing ran (bad option, model, folder or output
    folder); 3 some crops could not be used (recorded as error rows, the first few named here).
    Messages of DALI and Dask go to OUT/bmengine.log, not to the console.
    """
    from rich.console import Console

    from bmengine.engine.store.limits import InputLimits

    from bmengine.engine.backends import default_batch_size
    from bmengine.engine.backends.devices import parse_gpu_list
    from bmengine.engine.pipeline.shard import Shard

    console = Console(stderr=True, soft_wrap=True)
    try:
        share = Shard.parse(shard) if shard is not None else None
        gpu_ids = parse_gpu_list(gpus) if gpus is not None else ()
        if sum(bool(x) for x in (scheduler, workers, gpu_ids)) > 1:
            raise ValueError("choose one of --scheduler, --workers and --gpus")
    except ValueError as exc:
        console.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(EXIT_USAGE) from None
    if (problem := _input_problem(slides_dir, model, label_map) or writable_dir_problem(out)) is not None:
        console.print(f"[red]error:[/] {esc(problem)}")
        raise typer.Exit(EXIT_USAGE)
    console = Console(file=route_noise_to_log(out / LOG_NAME), highlight=False, soft_wrap=True)  # grep-able lines
    batch_size = batch_size or default_batch_size(model)
    limits = InputLimits(max_crop_bytes=max_crop_bytes, max_crop_pixels=max_crop_pixels)
    try:
        result = _run(slides_dir, out, model, batch_size, threads, scheduler, device_id, limits, label_map, share,
                      workers, gpu_ids, console)
    except typer.Exit:
        raise
    except Exception as exc:  # an engine bug: say so plainly, keep the traceback in the log
        traceback.print_exc()  # fd 2 is the log now
        console.print(f"[red]error:[/] unexpected {type(exc).__name__}: {esc(exc)} (traceback in {esc(out / LOG_NAME)})")
        raise typer.Exit(1) from None
    raise typer.Exit(result.exit_code)


def _input_problem(slides_dir: Path, model: Path, label_map: Path | None) -> str | None:
    """Check the model bundle, the label map and the slide folder before anything is created (OUT included)."""
    from bmengine.engine.labels import LabelMap, LabelMapError
    from bmengine.engine.model.card import ModelCardError, load_card
    from bmengine.engine.store import SlideStoreError, find_slide_stores

    try:
        card = load_card(model)
        if label_map is not None:
            LabelMap.load(label_map, card.classes)
        find_slide_stores(slides_dir)
    except (ModelCardError, SlideStoreError, LabelMapError) as exc:
        return str(exc)
    return None


def _run(slides_dir, out, model, batch_size, threads, scheduler, device_id, limits, label_map, shard, workers,
         gpus, console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from bmengine.engine.model.card import ModelCardError
    from bmengine.engine.outputs.lock import OutputBusyError
    from bmengine.engine.pipeline.run import RunConfig, run_engine
    from bmengine.engine.store import SlideStoreError

    cfg = RunConfig(slides_dir=slides_dir, model=model, out_dir=out, batch_size=batch_size, threads=threads,
                    scheduler=scheduler, device_id=device_id, limits=limits, label_map=label_map, shard=shard,
                    workers=workers, gpus=gpus)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("crops"),
               TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=False) as bars:
            result = run_engine(cfg, _RichProgress(bars, console))
    except (ModelCardError, SlideStoreError, FileNotFoundError, OutputBusyError) as exc:
        console.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(EXIT_USAGE) from None
    ok = sum(s.status != "failed" for s in result.statuses)
    rate = f"{result.crops_per_second:.0f} crops/s" if result.crops_per_second else "nothing left to classify"
    console.print(f"{ok}/{len(result.statuses)} slides done ({rate})")
    if warned := [s.slide_id for s in result.statuses if s.domain_warning]:
        console.print(f"[bold yellow]{len(warned)} slide(s) with a domain warning[/]: their counts do not hold for "
                      f"this model. To adapt it to your lab: `bmengine label-queue {esc(cfg.slides_dir)} --run "
                      f"{esc(out)} --out to_label/`, correct the folders, then `bmengine finetune` (README: \"Can I "
                      "trust the counts on my lab's slides?\")")
    if result.report:
        console.print(f"report: {esc(result.report)}")
    if shard is None:
        console.print(f"differential: {esc(out / 'differential.csv')}")
    else:
        console.print(f"shard {shard.index}/{shard.count}: its slides are in {esc(out)}; when every shard is done, "
                      f"`bmengine report {esc(out)}` writes the differential and the report")
    console.print(f"run record: {esc(result.run_record)}")
    console.print(f"log (DALI, Dask): {esc(out / LOG_NAME)}")
    return result


def register(app: typer.Typer) -> None:
    app.command("run")(run)
