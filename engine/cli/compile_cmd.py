"""``bmengine compile``: build a TensorRT engine on a GPU machine, from an exported ONNX model or
straight from a checkpoint. The route is chosen by the source file's suffix through ``ROUTES``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable

import typer

if TYPE_CHECKING:
    from bmengine.training.compile_tensorrt import CompileConfig


@dataclass(frozen=True)
class Route:
    """One way to a ``.plan``; ``load`` imports its compiler only when it is used."""

    name: str
    needs: str  # what it needs beyond TensorRT, for messages and --help
    load: Callable[[], Callable[["CompileConfig"], Path]]


def _onnx() -> Callable[["CompileConfig"], Path]:
    from bmengine.training.compile_tensorrt import compile_engine

    return compile_engine


def _torch_tensorrt() -> Callable[["CompileConfig"], Path]:
    from bmengine.training.compile_torch_tensorrt import compile_checkpoint

    return compile_checkpoint


_ONNX = Route("onnx", "an exported .onnx with its card (TensorRT's ONNX parser)", _onnx)
_TORCH = Route("torch-tensorrt", "a checkpoint .pt (torch-tensorrt, no ONNX)", _torch_tensorrt)
#: source suffix -> route
ROUTES: dict[str, Route] = {".onnx": _ONNX, ".pt": _TORCH, ".pth": _TORCH}


def route_for(source: Path) -> Route:
    from bmengine.training.compile_tensorrt import CompileError

    try:
        return ROUTES[source.suffix.lower()]
    except KeyError:
        known = ", ".join(f"{suffix} ({route.name})" for suffix, route in ROUTES.items())
        raise CompileError(f"{source}: cannot compile '{source.suffix}' files; compile one of {known}") from None


def compile_model(
    source: Annotated[Path, typer.Argument(help="An exported .onnx (int8, fp16 or fp32, with its card), or a "
                                                "checkpoint .pt compiled with torch-tensorrt.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .plan to write (a card goes beside it).")],
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch the engine accepts.")] = 512,
    opt_batch: Annotated[int, typer.Option(min=1, help="The batch it is tuned for: use it as `run --batch-size`.")] = 256,
    device_id: Annotated[int, typer.Option(min=0, help="GPU to build on (and later run on).")] = 0,
) -> None:
    """Compile for the GPU of this machine; an engine only runs on the GPU model and TensorRT
    version that built it (its card records both). From an .onnx the precision is the file's; from
    a .pt it is fp32 (TF32 allowed) and the plan has no OOD score."""
    from bmengine.engine.model.card import ModelCardError
    from bmengine.training.compile_tensorrt import CompileConfig, CompileError

    if not source.is_file():
        typer.echo(f"error: {source}: no such file", err=True)
        raise typer.Exit(2)
    try:
        route = route_for(source)
        path = route.load()(CompileConfig(source, out, max_batch=max_batch, opt_batch=min(opt_batch, max_batch),
                                          device_id=device_id))
    except (CompileError, ModelCardError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_model)
