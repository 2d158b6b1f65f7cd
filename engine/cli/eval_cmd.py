"""``bmengine eval``: score a model on a class-per-folder dataset through the engine's own path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    import numpy as np

from bmengine.engine.cli.options import DEFAULT_MODEL_PATH, InferenceBatchOption, LabelMapOption, ModelOption, ThreadsOption


def evaluate(
    folder: Annotated[Path, typer.Argument(help="Class-per-folder dataset; folder names must be model classes "
                                           "(or mapped to them with --label-map).")],
    model: ModelOption = DEFAULT_MODEL_PATH,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
    out: Annotated[Optional[Path], typer.Option("--out", help="Also write confusion matrix (CSV, PNG) and PR curves here.")] = None,
    held_out: Annotated[bool, typer.Option("--held-out", help="Score only the crops the model's training held out "
                                           "(the split its card records: seed and validation fraction).")] = False,
    batch_size: InferenceBatchOption = None,
    threads: ThreadsOption = 2,
    label_map: LabelMapOption = None,
) -> None:
    """Accuracy, macro P/R/F1, per-class F1 and the confusion matrix of MODEL on FOLDER."""
    from bmengine.engine.dataset import ImageFolder
    from bmengine.engine.evaluate import evaluate_files
    from bmengine.engine.model.card import ModelCardError
    from bmengine.engine.pipeline.engine import Engine, EngineSpec

    from bmengine.engine.backends import default_batch_size

    try:  # the Engine `bmengine run` sets up: same backend, pipeline, limits and label map
        batch_size = batch_size or default_batch_size(model)
        engine = Engine.load(EngineSpec(model, batch_size=batch_size, threads=threads, label_map=label_map))
        labels_of = engine.label_map if label_map is not None else None
        data = ImageFolder.scan(folder, tuple(engine.card.classes), label_map=labels_of)
        files, labels = list(data.files), data.labels
        if held_out:
            files, labels = _held_out(data, engine.card.training, model)
    except (ModelCardError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    report = evaluate_files(engine, files, labels, out_dir=out)
    report["model"] = {"path": str(model), "sha256": engine.card.weights_sha256, "name": engine.card.name}
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"{report['n']} crops: accuracy {report['accuracy']:.4f}, macro-F1 {report['macro_f1']:.4f}, "
               f"top-5 {report['top5_accuracy']:.4f}, lenient {report['lenient_accuracy']:.4f}, "
               f"ECE {report['expected_calibration_error']:.4f}")
    for name, f1 in report["per_class_f1"].items():
        typer.echo(f"  {name:<14} F1 {f1:.4f}  (n={report['per_class'][name]['support']})")


def _held_out(data, training: dict, model: Path) -> tuple[list[Path], "np.ndarray"]:
    """The validation split exactly as `bmengine train` drew it (same scan order, seed and fraction)."""
    from bmengine.engine.dataset import stratified_split

    if "seed" not in training or "val_fraction" not in training:
        raise ValueError(f"{model}: its card records no training split (seed, val_fraction); --held-out needs them")
    _, val = stratified_split(data.labels, float(training["val_fraction"]), int(training["seed"]))
    return [data.files[i] for i in val], data.labels[val]


def register(app: typer.Typer) -> None:
    app.command("eval")(evaluate)
