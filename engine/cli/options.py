"""Option types shared by several commands (defined once, documented once)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bmengine.engine.assets import DEFAULT_MODEL

ModelOption = Annotated[
    Path,
    typer.Option("--model", "-m", help="Model file (.onnx, .plan, .pt) with its .card.json beside it. "
                 "Default: the shipped PBC model."),
]
ThreadsOption = Annotated[int, typer.Option("--threads", min=1, help="CPU threads for decoding and inference.")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="Crops per batch.")]
InferenceBatchOption = Annotated[Optional[int], typer.Option(
    "--batch-size", min=1, help="Crops per batch. Default: the model's runtime chooses (16 with ONNX Runtime "
    "on a CPU, where small batches run fastest; a TensorRT plan's tuned --opt-batch).")]
MaxCropBytesOption = Annotated[int, typer.Option(
    "--max-crop-bytes", min=1, help="Refuse (and name) any crop file larger than this many bytes.")]
MaxCropPixelsOption = Annotated[int, typer.Option(
    "--max-crop-pixels", min=1, help="Refuse (and name) any crop whose header declares more pixels than this; "
    "checked before decoding, so a decompression bomb never reaches the decoder.")]
DEFAULT_MODEL_PATH = DEFAULT_MODEL

# Training budget options, shared by `train` and `ablate`.
_DATA_DIR = typer.Argument(help="Class-per-folder dataset (nested sub-folders allowed).")
DataDirArgument = Annotated[Path, _DATA_DIR]
OptionalDataDirArgument = Annotated[Optional[Path], _DATA_DIR]  # commands with a mode that needs no data
EpochsOption = Annotated[int, typer.Option(help="Epochs (cosine schedule over all of them).")]
LrOption = Annotated[float, typer.Option(help="Peak learning rate.")]
ResizeOption = Annotated[int, typer.Option(help="Crops are resized to this square size first.")]
CropOption = Annotated[int, typer.Option(help="Network input size (random crop in training, centre crop after).")]
SeedOption = Annotated[int, typer.Option(help="Seed of the stratified split and the run.")]
TrainDeviceOption = Annotated[str, typer.Option(
    "--device", help="Where the network trains: auto (a CUDA GPU if torch sees one, else the CPU), cpu, cuda or "
    "cuda:N. Augmentation runs on the CPU either way, drawing the same crops.")]
TrainThreadsOption = Annotated[int, typer.Option(
    "--threads", min=1, help="CPU threads for augmentation (and for the network on a CPU).")]
LimitPerClassOption = Annotated[Optional[int], typer.Option(help="Use at most this many images per class (smoke runs).")]
MaxStepsOption = Annotated[Optional[int], typer.Option(help="Cap steps per epoch (smoke runs).")]
LabelMapOption = Annotated[Optional[Path], typer.Option(
    "--label-map", help="CSV source,model_class: your label (folder) names -> the model's classes; "
    "an empty model_class leaves that label out of scoring.")]
