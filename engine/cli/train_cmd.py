"""``bmengine train``: train a classifier on a class-per-folder dataset (needs the [train] extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bmengine.engine.cli.options import (
    BatchOption,
    CropOption,
    OptionalDataDirArgument,
    EpochsOption,
    LimitPerClassOption,
    LrOption,
    MaxStepsOption,
    ResizeOption,
    SeedOption,
    TrainDeviceOption,
    TrainThreadsOption,
)


def train(
    data_dir: OptionalDataDirArgument = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder: checkpoints, split, metrics.")] = None,
    backbone: Annotated[str, typer.Option(help="Backbone name (see `bmengine train --list`).")] = "regnetx_032",
    attention: Annotated[str, typer.Option(help="Attention block in every RegNet/ResNet block, a stage layer (asae, after layer3), or 'none' (see --list).")] = "se",
    loss: Annotated[str, typer.Option(help="Loss name (see --list).")] = "cost_sensitive",
    sampler: Annotated[str, typer.Option(help="shuffle or balanced (equal images per class per batch).")] = "shuffle",
    balance_to: Annotated[Optional[int], typer.Option(help="Offline augmentation: grow every training class to this many crops.")] = None,
    hue_range: Annotated[Optional[str], typer.Option(help="Map every pixel's HSV hue into MIN,MAX degrees (Wang et al.: 125,155); the engine applies it too.")] = None,
    taxonomy: Annotated[Optional[str], typer.Option(help="Taxonomy; default: the one whose classes are the folders.")] = None,
    epochs: EpochsOption = 10,
    batch_size: BatchOption = 64,
    lr: LrOption = 2e-3,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd (momentum 0.9).")] = "adamw",
    resize: ResizeOption = 128,
    crop: CropOption = 112,
    val_fraction: Annotated[float, typer.Option(help="Stratified validation share, never trained on.")] = 0.2,
    seed: SeedOption = 0,
    resume: Annotated[bool, typer.Option(help="Continue from RUN_DIR/checkpoints/last.pt if present.")] = True,
    limit_per_class: LimitPerClassOption = None,
    max_steps_per_epoch: MaxStepsOption = None,
    keep_every: Annotated[int, typer.Option(help="Also keep a checkpoint every N epochs (0: only last.pt and best.pt).")] = 0,
    augment: Annotated[str, typer.Option(help="Augmentation preset: basic (crops, flips, 90° turns, brightness/contrast), "
                                              "stain, scale, stain-scale, or cross-lab (stain + field-of-view scale + "
                                              "blur/noise/JPEG; see docs/training.md).")] = "basic",
    augment_opt: Annotated[Optional[list[str]], typer.Option(help="Override one augmentation field, KEY=VALUE, repeatable "
                                                                  "(e.g. zoom_range=0.7,2.2 hue=90 jpeg_p=0.5).")] = None,
    consistency: Annotated[float, typer.Option(
        min=0.0, help="Two augmented views of every crop and this weight times the Jensen-Shannon divergence of "
                      "their predictions (AugMix uses 12); 0: one view. Doubles the training cost.")] = 0.0,
    feature_style: Annotated[str, typer.Option(
        help="Re-style the first two stages' features in training: none, mixstyle (mix channel statistics "
             "between crops) or dsu (perturb them); inference is unchanged.")] = "none",
    feature_style_p: Annotated[float, typer.Option(help="Chance per batch and stage of --feature-style.")] = 0.5,
    average_from: Annotated[Optional[int], typer.Option(
        min=0, help="Average the weights at every step after this many epochs (SWA) and re-measure batch norm at the "
                    "end; last.pt is the average. E.g. 1 of --epochs 4.")] = None,
    init_from: Annotated[Optional[Path], typer.Option(
        help="Start from this checkpoint's weights (same backbone and classes), e.g. a short clean-augmentation "
             "pass over a cross-lab model; see docs/training.md.")] = None,
    warmup_epochs: Annotated[float, typer.Option(
        min=0.0, help="Linear learning-rate warm-up, in epochs (0 when continuing from --init-from weights).")] = 0.5,
    device: TrainDeviceOption = "auto",
    threads: TrainThreadsOption = 2,
    list_parts: Annotated[bool, typer.Option("--list", help="List backbones, attention blocks and losses, then exit.")] = False,
) -> None:
    """Train a classifier; every epoch leaves a checkpoint that `--resume` continues from."""
    try:
        from bmengine.training.trainer import TrainConfig, train as run_training
    except ImportError as exc:  # an engine-only install: say what is missing, not a torch traceback
        typer.echo(f"error: training needs the [train] extra (pip install 'bmengine[train]'): {exc}", err=True)
        raise typer.Exit(2) from None

    if list_parts:
        from bmengine.training.losses import LOSSES
        from bmengine.engine.model.networks import ATTENTION, BACKBONES, STAGE_ATTENTION

        typer.echo(f"backbones: {', '.join(BACKBONES.names())}")
        typer.echo(f"attention: {', '.join(ATTENTION.names())}")
        typer.echo(f"stage attention (after layer3): {', '.join(STAGE_ATTENTION.names())}")
        typer.echo(f"losses:    {', '.join(LOSSES.names())}")
        return
    from bmengine.training.augment import make_augment_config, parse_augment_options
    from bmengine.training.feature_style import FeatureStyleConfig

    try:
        augment_options = parse_augment_options(augment_opt)
        make_augment_config(augment, crop=crop, **augment_options)
        style = FeatureStyleConfig(method=feature_style, p=feature_style_p)
    except (KeyError, ValueError) as exc:
        raise typer.BadParameter(str(exc).strip('"')) from None
    if data_dir is None or out is None:
        raise typer.BadParameter("give DATA_DIR and --out RUN_DIR (or --list to see the catalogue)")
    if init_from is not None and not init_from.is_file():
        raise typer.BadParameter(f"{init_from}: checkpoint not found", param_hint="--init-from")
    try:
        cfg = TrainConfig(
            data_dir=str(data_dir), run_dir=str(out), taxonomy=taxonomy, backbone=backbone, attention=attention,
            loss=loss, sampler=sampler, balance_to=balance_to,
            hue_range=tuple(float(v) for v in hue_range.split(",")) if hue_range else None, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
            resize=resize, crop=crop, val_fraction=val_fraction, seed=seed, limit_per_class=limit_per_class,
            max_steps_per_epoch=max_steps_per_epoch, keep_every=keep_every,
            augment=augment, augment_options=augment_options, warmup_epochs=warmup_epochs,
            init_from=str(init_from) if init_from else None, consistency=consistency, feature_style=style,
            average_from=average_from, device=device, threads=threads,
        )
    except ValueError as exc:  # a value only the whole config can judge, e.g. --average-from past --epochs
        raise typer.BadParameter(str(exc)) from None
    from bmengine.training.checkpoint import UnsafeCheckpointError
    from bmengine.training.device import DeviceUnavailableError
    from bmengine.training.image_cache import UndecodableImagesError
    from bmengine.training.trainer import InitWeightsError, TrainingDataError

    try:
        summary = run_training(cfg, resume=resume, log=lambda msg: typer.echo(msg, err=True))
    except (UnsafeCheckpointError, InitWeightsError, DeviceUnavailableError, TrainingDataError,
            UndecodableImagesError) as err:  # nothing trained: say why
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"best validation macro-F1 {summary['best_macro_f1']:.4f}; checkpoints in {out / 'checkpoints'}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
