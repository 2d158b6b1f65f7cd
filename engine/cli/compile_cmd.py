"""``bmengine compile``: build a TensorRT engine from an exported ONNX model (GPU machines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def compile_model(
    onnx: Annotated[Path, typer.Argument(help="Exported .onnx (with its card).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .plan to write (a card goes beside it).")],
    fp16: Annotated[bool, typer.Option(help="Allow fp16 kernels.")] = True,
    max_batch: Annotated[int, typer.Option(help="Largest batch the engine accepts.")] = 256,
) -> None:
    """Compile for the GPU of this machine; an engine only runs on the GPU model that built it."""
    from bmengine.engine.model.card import ModelCardError
    from bmengine.training.compile_tensorrt import CompileConfig, CompileError, compile_engine

    try:
        path = compile_engine(CompileConfig(onnx, out, fp16=fp16, max_batch=max_batch,
                                            opt_batch=min(128, max_batch)))
    except (CompileError, ModelCardError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_model)
