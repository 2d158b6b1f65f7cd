"""``bmengine ingest``: turn folders of crops or a CSV manifest into slide stores (``*.zarr``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bmengine.engine.cli.console import esc, writable_dir_problem
from bmengine.engine.cli.options import MaxCropBytesOption, MaxCropPixelsOption
from bmengine.engine.store.limits import DEFAULT_MAX_CROP_BYTES, DEFAULT_MAX_CROP_PIXELS

EXIT_OK, EXIT_FILES_SKIPPED, EXIT_USAGE = 0, 1, 2


class _RichProgress:
    """One bar over every file; the slide being written is its label."""

    def __init__(self, bars, console):
        self.bars, self.console, self.task = bars, console, None

    def planned(self, n_slides, n_files):
        self.task = self.bars.add_task(f"{n_slides} slides", total=n_files)

    def slide_started(self, slide_id, n_files):
        self.bars.update(self.task, description=f"{esc(slide_id)} ({n_files} files)")

    def files_done(self, n):
        self.bars.advance(self.task, n)

    def slide_finished(self, slide_id, n_cells, status):
        text = {
            "written": f"[green]{esc(slide_id)}[/]: {n_cells} cells",
            "exists": f"[cyan]{esc(slide_id)}[/]: store exists, left as is (--overwrite replaces it)",
            "failed": f"[red]{esc(slide_id)}[/]: no store written",
        }[status]
        self.console.print(text)


def _summary(report, console) -> None:
    from rich.table import Table

    table = Table(title="slide stores written")
    table.add_column("slide")
    table.add_column("cells", justify="right")
    table.add_column("store")
    for slide_id, path, n in report.slides:
        table.add_row(esc(slide_id), str(n), esc(path))
    for slide_id, path in report.existing:
        table.add_row(esc(slide_id), "[cyan]exists[/]", esc(path))
    table.add_section()
    table.add_row(f"{len(report.slides)} written", str(report.n_cells), "")
    console.print(table)
    if report.problems:  # one line each, never folded, so a file name can be found with grep
        console.print(f"[red]{len(report.problems)} skipped (not in any store):[/]")
        for where, reason in report.problems:
            console.print(f"  {esc(where)}: {esc(reason)}", soft_wrap=True)
    for where, what in report.warnings:
        console.print(f"[yellow]warning:[/] {esc(where)}: {esc(what)}", soft_wrap=True)


def ingest(
    folder: Annotated[Optional[Path], typer.Argument(
        metavar="FOLDER", help="Folder with one sub-folder of crops per slide (sub-folder name = slide id).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write <slide_id>.zarr stores into.")] = Path("slides"),
    manifest: Annotated[Optional[Path], typer.Option(
        "--manifest", help="CSV with columns path,slide_id[,label][,patient_id]; paths relative to the CSV.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace stores that already exist (each atomically).")] = False,
    max_crop_bytes: MaxCropBytesOption = DEFAULT_MAX_CROP_BYTES,
    max_crop_pixels: MaxCropPixelsOption = DEFAULT_MAX_CROP_PIXELS,
) -> None:
    """Build one slide store per slide from FOLDER or from --manifest (exactly one of the two).

    Crops keep their original bytes (JPEG, PNG or TIFF, told apart by content, not extension).

    Missing, unreadable and non-image files, anything that is not a regular file (links to devices,
    FIFOs), files above --max-crop-bytes and images above --max-crop-pixels are skipped and listed;
    the other files and slides are stored. A file listed twice for one slide is stored once.

    Exit status: 0 every file stored; 1 some files were skipped; 2 bad usage (nothing written).
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from bmengine.engine.store.ingest import IngestError, ingest as run_ingest, plan_folder, plan_manifest
    from bmengine.engine.store.limits import InputLimits

    if (folder is None) == (manifest is None):
        raise typer.BadParameter("give exactly one of FOLDER or --manifest", param_hint="FOLDER / --manifest")
    console = Console(stderr=True)
    try:
        plan = plan_folder(folder, exclude=out) if folder is not None else plan_manifest(manifest)
    except IngestError as exc:
        console.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(EXIT_USAGE) from None
    if (problem := writable_dir_problem(out)) is not None:
        console.print(f"[red]error:[/] {esc(problem)}")
        raise typer.Exit(EXIT_USAGE)
    limits = InputLimits(max_crop_bytes=max_crop_bytes, max_crop_pixels=max_crop_pixels)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
               TimeRemainingColumn())
    with Progress(*columns, console=console) as bars:
        report = run_ingest(plan, out, overwrite=overwrite, progress=_RichProgress(bars, console), limits=limits)
    _summary(report, Console())
    raise typer.Exit(EXIT_FILES_SKIPPED if report.problems else EXIT_OK)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
