"""The ``bmengine`` command line: one Typer app, one module per command, heavy imports inside."""

from __future__ import annotations

import typer

from bmengine.engine.cli import (
    ablate_cmd,
    bench_cmd,
    compile_cmd,
    doctor_cmd,
    explain_cmd,
    eval_cmd,
    export_cmd,
    finetune_cmd,
    ingest_cmd,
    interpolate_cmd,
    label_queue_cmd,
    report_cmd,
    run_cmd,
    samples_cmd,
    train_cmd,
)

app = typer.Typer(
    name="bmengine",
    help="Classify every cell of every slide in an archive; write per-patient differential counts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts say "[gpu]" and "[train]" literally
)


@app.callback()
def _root() -> None:
    """bmengine: batch cell classification and differential counts for haematology archives."""


for module in (ingest_cmd, run_cmd, report_cmd, train_cmd, export_cmd, eval_cmd, doctor_cmd, samples_cmd, bench_cmd,
               compile_cmd, ablate_cmd, explain_cmd, finetune_cmd, interpolate_cmd, label_queue_cmd):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
