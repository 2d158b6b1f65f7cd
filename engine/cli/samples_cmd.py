"""``bmengine build-samples``: rebuild the demo's sample slide stores from ../shared/data/pbc."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bmengine.engine.assets import SAMPLE_SLIDES


def build_samples(
    data: Annotated[Path, typer.Option(help="The PBC dataset (class-per-folder).")] = Path("../shared/data/pbc"),
    out: Annotated[Path, typer.Option(help="Where the stores go.")] = SAMPLE_SLIDES,
    split_seed: Annotated[int, typer.Option(help="Training seed of the default model (its validation split is used).")] = 0,
    val_fraction: Annotated[float, typer.Option(help="Validation share of that training run.")] = 0.2,
    leukocytes: Annotated[int, typer.Option(help="Leukocytes per synthetic patient.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the crop draw.")] = 7,
) -> None:
    """Synthetic patients with known mixtures, from real PBC validation crops."""
    from bmengine.engine.demo import SampleConfig, build_sample_slides

    for path in build_sample_slides(SampleConfig(data, out, split_seed, val_fraction, leukocytes, seed)):
        typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("build-samples")(build_samples)
