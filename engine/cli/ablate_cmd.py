"""``bmengine ablate``: train and score a grid of backbone x attention x loss ([train] extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def ablate(
    data_dir: Annotated[Path, typer.Argument(help="Class-per-folder dataset.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the runs and the table.")],
    backbones: Annotated[str, typer.Option(help="Comma-separated backbone names.")] = "regnetx_032",
    attentions: Annotated[str, typer.Option(help="Comma-separated attention names ('none' included).")] = "none,se",
    losses: Annotated[str, typer.Option(help="Comma-separated loss names.")] = "ce,cost_sensitive",
    epochs: Annotated[int, typer.Option(help="Epochs per configuration.")] = 3,
    resize: Annotated[int, typer.Option(help="Resize size.")] = 72,
    crop: Annotated[int, typer.Option(help="Network input size.")] = 64,
    batch_size: Annotated[int, typer.Option(help="Images per step.")] = 64,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    seed: Annotated[int, typer.Option(help="Seed of the split and the runs.")] = 0,
    limit_per_class: Annotated[Optional[int], typer.Option(help="At most this many images per class.")] = None,
    max_steps_per_epoch: Annotated[Optional[int], typer.Option(help="Cap steps per epoch.")] = None,
) -> None:
    """One table in the shape of Hu et al.'s Tables 4-7, plus inference img/s on this CPU."""
    from bmengine.training.ablation import AblationConfig, run_ablation

    cfg = AblationConfig(str(data_dir), str(out), _names(backbones), _names(attentions), _names(losses), epochs,
                         resize, crop, batch_size, lr, seed, limit_per_class, max_steps_per_epoch)
    table = run_ablation(cfg, log=lambda m: typer.echo(m, err=True))
    typer.echo(table.to_string(index=False))
    typer.echo(f"table: {out / 'ablation.md'}")


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate)
