"""``bmengine label-queue SLIDES --run OUT --out FOLDER``: crops for a lab to label, sorted by the model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXIT_USAGE = 2


def label_queue(
    slides: Annotated[Path, typer.Argument(help="The slide stores the run classified.")],
    run: Annotated[Path, typer.Option("--run", help="The run's output folder (OUT of `bmengine run`).")],
    out: Annotated[Path, typer.Option("--out", help="The folder to create: one sub-folder per model class.")],
    per_class: Annotated[int, typer.Option(min=1, help="At most this many crops per predicted class.")] = 20,
    all_slides: Annotated[bool, typer.Option(
        "--all-slides", help="Draw from every finished slide, not only those with a domain warning.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 0,
) -> None:
    """Copy crops of a finished run into one folder per class, each where the model put it, for a
    technician to correct: the corrected folder is what `bmengine finetune` adapts the model with.
    By default only slides with a domain warning are drawn from. Nothing is overwritten."""
    from rich.console import Console

    from bmengine.engine.cli.console import esc
    from bmengine.engine.outputs.label_queue import LabelQueueConfig, LabelQueueError, build_label_queue
    from bmengine.engine.outputs.lock import OutputBusyError, OutputLock

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    for path, what in ((slides, "slide folder"), (run, "run folder")):
        if not path.is_dir():
            console.print(f"[red]error:[/] {esc(path)}: {what} not found")
            raise typer.Exit(EXIT_USAGE)
    try:
        with OutputLock(run):  # a run still writing would change what is drawn
            queue = build_label_queue(LabelQueueConfig(slides, run, out, per_class, all_slides, seed))
    except (OutputBusyError, LabelQueueError) as exc:
        console.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(EXIT_USAGE) from None
    slides_word = "slide" if len(queue.slides) == 1 else "slides"
    console.print(f"{queue.n_crops} crops from {len(queue.slides)} {slides_word} in {esc(queue.folder)}")
    for name, n in queue.per_class.items():
        console.print(f"  {name}: {n}")
    for note in queue.skipped:
        console.print(f"  left out: {esc(note)}")
    console.print(f"sort them as {esc(queue.folder / 'README.txt')} says, then: "
                  f"bmengine finetune MODEL {esc(queue.folder)} --out RUN_DIR")


def register(app: typer.Typer) -> None:
    app.command("label-queue")(label_queue)
