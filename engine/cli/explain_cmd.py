"""``bmengine explain``: Grad-CAM and SmoothGrad overlays for chosen or sampled crops ([train] extra)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Optional

import typer


def explain(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint from `bmengine train`, or an exported .onnx whose "
                                               "card names its checkpoint (the shipped default carries one beside it).")],
    crops: Annotated[list[Path], typer.Argument(help="Crop files, or folders to sample crops from.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the overlay PNGs.")] = Path("explanations"),
    sample: Annotated[int, typer.Option(help="Crops drawn at random from each folder given.")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = 0,
    smooth_samples: Annotated[Optional[int], typer.Option(help="Noisy copies per crop for SmoothGrad.")] = 16,
) -> None:
    """Write crop | Grad-CAM | SmoothGrad panels, one PNG per crop, titled with the prediction."""
    from bmengine.engine.dataset import IMAGE_SUFFIXES
    from bmengine.training.explain import explain as run_explain
    from bmengine.training.explain import write_overlays

    rng = random.Random(seed)
    files: list[Path] = []
    for item in crops:
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            files += rng.sample(found, min(sample, len(found)))
        elif item.is_file():
            files.append(item)
        else:
            typer.echo(f"error: {item}: no such file or folder", err=True)
            raise typer.Exit(2)
    from bmengine.engine.model.card import ModelCardError
    from bmengine.training.checkpoint import UnsafeCheckpointError
    from bmengine.training.finetune import checkpoint_of

    try:
        weights = checkpoint_of(checkpoint)  # gradients need the network: an exported model's own checkpoint
        if weights != checkpoint:
            typer.echo(f"{checkpoint}: explaining its checkpoint {weights}", err=True)
        explanations, pixels = run_explain(weights, files, smooth_samples or 16)
    except (UnsafeCheckpointError, ModelCardError, FileNotFoundError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    for path, e in zip(write_overlays(explanations, pixels, out), explanations):
        typer.echo(f"{path}  {e.predicted} {e.probability:.1%}")


def register(app: typer.Typer) -> None:
    app.command("explain")(explain)
