"""``bmengine interpolate``: weights between a robust model and its clean-tuned copy ([train] extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def interpolate(
    base: Annotated[Path, typer.Argument(help="The robust model's checkpoint (e.g. the cross-lab run's last.pt).")],
    tuned: Annotated[Path, typer.Argument(help="The same network trained further (`bmengine train --init-from BASE`).")],
    out: Annotated[Path, typer.Option("--out", help="Run folder; the checkpoint is written to OUT/checkpoints/last.pt.")],
    alpha: Annotated[float, typer.Option(help="0 keeps BASE, 1 keeps TUNED.")] = 0.5,
) -> None:
    """Write (1 - ALPHA) * BASE + ALPHA * TUNED as a run that `bmengine export` reads (WiSE-FT)."""
    try:
        from bmengine.training.checkpoint import UnsafeCheckpointError
        from bmengine.training.interpolate import InterpolateConfig, InterpolateError, interpolate as run
    except ImportError as exc:
        typer.echo(f"error: interpolate needs the [train] extra (pip install 'bmengine[train]'): {exc}", err=True)
        raise typer.Exit(2) from None
    for path in (base, tuned):
        if not path.is_file():
            typer.echo(f"error: {path}: checkpoint not found", err=True)
            raise typer.Exit(2)
    try:
        written = run(InterpolateConfig(base, tuned, alpha, out))
    except (InterpolateError, UnsafeCheckpointError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {written} (alpha {alpha}); export it with `bmengine export {written} --out ...`")


def register(app: typer.Typer) -> None:
    app.command("interpolate")(interpolate)
