"""``bmengine finetune``: adapt a trained model to a lab's own labelled crops ([train] extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bmengine.engine.cli.options import LabelMapOption, SeedOption, TrainDeviceOption, TrainThreadsOption


def finetune(
    model: Annotated[Path, typer.Argument(help="The model to adapt: an exported .onnx whose card names its "
                                          "checkpoint (the shipped default carries one beside it), or a trainer "
                                          "checkpoint (RUN/checkpoints/last.pt).")],
    data_dir: Annotated[Path, typer.Argument(help="The lab's labelled crops, one folder per label.")],
    out: Annotated[Path, typer.Option("--out", help="Run folder for the fine-tuned model.")],
    label_map: LabelMapOption = None,
    epochs: Annotated[int, typer.Option(min=1, help="Fine-tuning epochs (a few hundred crops make a few steps each).")] = 30,
    lr: Annotated[float, typer.Option(min=0.0, help="Peak learning rate (a fraction of training's).")] = 3e-4,
    val_fraction: Annotated[float, typer.Option(min=0.05, max=0.95, help="Share of the lab's crops held out "
                                                "for scoring (stratified), never trained on.")] = 0.5,
    replay: Annotated[int, typer.Option(min=0, help="Crops per class of the base run's training split mixed "
                                        "into fine-tuning, so classes the lab did not label are not forgotten "
                                        "(0: none; skipped with a warning when those crops are not on this machine).")] = 25,
    train_per_class: Annotated[Optional[int], typer.Option(min=1, help="Train on at most this many of the lab's "
                                                          "crops per class (the held-out half is unchanged): how "
                                                          "many labels does a lab need?")] = None,
    seed: SeedOption = 0,
    name: Annotated[Optional[str], typer.Option(help="Model name in the card.")] = None,
    device: TrainDeviceOption = "auto",
    threads: TrainThreadsOption = 2,
) -> None:
    """Train MODEL further on DATA_DIR, export ONNX (fp32 + int8), and record in the card both the
    lab's held-out score and the original validation split's."""
    from bmengine.engine.labels import LabelMapError
    from bmengine.engine.model.card import ModelCardError
    from bmengine.training.checkpoint import UnsafeCheckpointError
    from bmengine.training.finetune import FinetuneConfig, checkpoint_of
    from bmengine.training.finetune import finetune as run_finetune

    if not model.is_file():
        typer.echo(f"error: {model}: model not found (fine-tuning starts from an exported .onnx whose card names "
                   "its checkpoint, such as the shipped default, or from a trainer checkpoint RUN/checkpoints/last.pt)",
                   err=True)
        raise typer.Exit(2)
    try:
        checkpoint = checkpoint_of(model)
        cfg = FinetuneConfig(checkpoint, data_dir, out, label_map=label_map, epochs=epochs, lr=lr,
                             val_fraction=val_fraction, seed=seed, name=name, replay_per_class=replay,
                             train_per_class=train_per_class, model=model if checkpoint != model else None,
                             device=device, threads=threads)
        if checkpoint != model:
            typer.echo(f"{model}: fine-tuning its checkpoint {checkpoint}", err=True)
        paths = run_finetune(cfg, log=lambda m: typer.echo(m, err=True))
    except (UnsafeCheckpointError, LabelMapError, ModelCardError, ValueError,
            FileNotFoundError) as err:  # FileNotFoundError includes checkpoint_of's BaseModelNotFoundError
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for precision, path in paths.items():
        typer.echo(f"{precision}: {path}")


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune)
