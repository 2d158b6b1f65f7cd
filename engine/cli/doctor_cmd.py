"""``bmengine doctor``: tell a user what their machine can run, and why not."""

from __future__ import annotations

import typer


def doctor() -> None:
    """Check runtimes (ONNX Runtime, DALI CPU/GPU, TensorRT, torch, Triton) and the shipped model."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from bmengine.engine.doctor import run_checks

    table = Table("check", "ok", "detail")
    for check in run_checks():
        table.add_row(escape(check.name), "[green]yes[/]" if check.ok else "[yellow]no[/]", escape(check.detail))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor)
