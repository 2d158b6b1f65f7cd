"""``bmengine ablate``: train and score a grid of backbone x attention x loss ([train] extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bmengine.engine.cli.options import (
    BatchOption,
    CropOption,
    DataDirArgument,
    EpochsOption,
    LimitPerClassOption,
    LrOption,
    MaxStepsOption,
    ResizeOption,
    SeedOption,
)


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def ablate(
    data_dir: DataDirArgument,
    out: Annotated[Path, typer.Option("--out", help="Folder for the runs and the table.")],
    backbones: Annotated[str, typer.Option(help="Comma-separated backbone names.")] = "regnetx_032",
    attentions: Annotated[str, typer.Option(help="Comma-separated attention names ('none' included).")] = "none,se",
    losses: Annotated[str, typer.Option(help="Comma-separated loss names.")] = "ce,cost_sensitive",
    design: Annotated[str, typer.Option(help="grid: every combination; sweep: change one factor at a time "
                                        "around the first backbone, attention and loss (Tables 4-7 of Hu et al.).")] = "grid",
    epochs: EpochsOption = 3,
    resize: ResizeOption = 72,
    crop: CropOption = 64,
    batch_size: BatchOption = 64,
    lr: LrOption = 2e-3,
    seed: SeedOption = 0,
    limit_per_class: LimitPerClassOption = None,
    max_steps_per_epoch: MaxStepsOption = None,
) -> None:
    """One table in the shape of Hu et al.'s Tables 4-7, plus inference img/s on this CPU."""
    from bmengine.training.ablation import AblationConfig, run_ablation

    cfg = AblationConfig(str(data_dir), str(out), _names(backbones), _names(attentions), _names(losses), design, epochs,
                         resize, crop, batch_size, lr, seed, limit_per_class, max_steps_per_epoch)
    try:
        table = run_ablation(cfg, log=lambda m: typer.echo(m, err=True))
    except (KeyError, ValueError) as error:  # unknown part, another budget in this folder: nothing is lost
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(table.to_string(index=False))
    typer.echo(f"table: {out / 'ablation.md'}")


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)
