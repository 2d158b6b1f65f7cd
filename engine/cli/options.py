"""Option types shared by several commands (defined once, documented once)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bmengine.engine.assets import DEFAULT_MODEL

ModelOption = Annotated[
    Path,
    typer.Option("--model", "-m", help="Model file (.onnx, .plan, .pt) with its .card.json beside it. "
                 "Default: the shipped PBC model."),
]
ThreadsOption = Annotated[int, typer.Option("--threads", help="CPU threads for decoding and inference.")]
BatchOption = Annotated[int, typer.Option("--batch-size", help="Crops per batch.")]
DEFAULT_MODEL_PATH = DEFAULT_MODEL
