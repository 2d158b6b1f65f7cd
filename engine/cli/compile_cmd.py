"""``bmengine compile``: build a TensorRT engine from an exported ONNX model (GPU machines)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def compile_model(
    onnx: Annotated[Path, typer.Argument(help="Exported .onnx (with its card): the int8 or the fp32 one.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .plan to write (a card goes beside it).")],
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch the engine accepts.")] = 512,
    opt_batch: Annotated[int, typer.Option(min=1, help="The batch it is tuned for: use it as `run --batch-size`.")] = 256,
    device_id: Annotated[int, typer.Option(min=0, help="GPU to build on (and later run on).")] = 0,
) -> None:
    """Compile for the GPU of this machine; an engine only runs on the GPU model and TensorRT
    version that built it (its card records both). The precision is the ONNX file's."""
    from bmengine.engine.model.card import ModelCardError
    from bmengine.training.compile_tensorrt import CompileConfig, CompileError, compile_engine

    if not onnx.is_file():
        typer.echo(f"error: {onnx}: no such file", err=True)
        raise typer.Exit(2)
    try:
        path = compile_engine(CompileConfig(onnx, out, max_batch=max_batch, opt_batch=min(opt_batch, max_batch),
                                            device_id=device_id))
    except (CompileError, ModelCardError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_model)
