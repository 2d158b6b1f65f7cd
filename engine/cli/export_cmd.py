"""``bmengine export``: a training checkpoint -> ONNX fp32 + int8 (+ fp16) with model cards ([train] extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint from `bmengine train` (e.g. RUN/checkpoints/best.pt).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="fp32 .onnx path; int8 goes beside it as <stem>_int8.onnx.")],
    int8: Annotated[bool, typer.Option(help="Also write the int8 static-quantised model.")] = True,
    calibration_images: Annotated[int, typer.Option(help="Training crops used to calibrate int8.")] = 256,
    int8_ops: Annotated[str, typer.Option(
        help="Operators quantised to int8: all, conv (Conv/Gemm only), or auto (conv for attention "
             "models with softmax/LayerNorm, else all).")] = "auto",
    int8_calibration: Annotated[str, typer.Option(
        help="How int8 activation ranges are set from the calibration crops: percentile (99.99th), minmax "
             "or entropy.")] = "percentile",
    calibration_augment: Annotated[str, typer.Option(
        help="Also calibrate int8 on an augmented copy of each calibration crop: none, training (the "
             "checkpoint's own augmentation recipe) or a preset (basic, stain, scale, stain-scale, cross-lab); "
             "see benchmarks/results/cross-lab-recipes.md.")] = "none",
    calibration_augment_opt: Annotated[Optional[list[str]], typer.Option(
        help="Override one field of that augmentation, KEY=VALUE, repeatable (as `train --augment-opt`), "
             "e.g. colour_p=1.")] = None,
    evaluate: Annotated[bool, typer.Option(help="Score both models on the run's validation split.")] = True,
    name: Annotated[Optional[str], typer.Option(help="Model name in the card (default: file stem).")] = None,
    ood: Annotated[bool, typer.Option(
        help="Add the out-of-distribution score (a second output, ood_score) and its threshold to the card.")] = True,
    false_flag_rate: Annotated[float, typer.Option(
        help="Share of validation crops above the OOD threshold (0-0.5].")] = 0.05,
    ood_score: Annotated[str, typer.Option(
        help="What the OOD threshold applies to: mahalanobis+energy (the feature distance plus the logits' "
             "energy, each standardised on the validation split) or mahalanobis-tied (the distance alone).")]
        = "mahalanobis+energy",
    calibrate: Annotated[bool, typer.Option(
        help="Fit temperature scaling on the validation split and record it in the card.")] = True,
    fp16: Annotated[bool, typer.Option(
        help="Also write <stem>_fp16.onnx (float32 IO, Softmax/LayerNorm/OOD head kept fp32) for fp16 "
             "TensorRT plans.")] = False,
    int8_keep_fp32: Annotated[Optional[list[str]], typer.Option(
        help="Leave the nodes whose name contains this fragment in fp32 in the int8 model (repeatable), "
             "e.g. /stages.3/ for CoAtNet-0's last stage: closer OOD scores to fp32, a little slower; "
             "see benchmarks/results/open-set.md.")] = None,
    decode_device: Annotated[str, typer.Option(
        help="Where the int8 calibration and OOD-fit crops are decoded: auto (the GPU's nvJPEG where "
             "there is one), cpu or gpu.")] = "auto",
    with_checkpoint: Annotated[bool, typer.Option(
        help="Also write <stem>.checkpoint.pt beside the model: its weights in half precision, without "
             "optimiser state, so `bmengine finetune MODEL.onnx` works where the training run is not (the "
             "shipped default carries one).")] = False,
) -> None:
    """Export ONNX with a model card (classes, taxonomy, preprocessing, metrics, sha256)."""
    from bmengine.training.augment import parse_augment_options
    from bmengine.training.export import ExportConfig, export as run_export

    if not checkpoint.is_file():
        typer.echo(f"error: {checkpoint}: checkpoint not found", err=True)
        raise typer.Exit(2)
    try:
        calibration_augment_options = parse_augment_options(calibration_augment_opt, "--calibration-augment-opt")
        cfg = ExportConfig(checkpoint, out, int8=int8, calibration_images=calibration_images, evaluate=evaluate,
                           name=name, int8_ops=int8_ops, int8_calibration=int8_calibration, ood=ood,
                           false_flag_rate=false_flag_rate, ood_score=ood_score, calibrate=calibrate,
                           fp16=fp16, decode_device=decode_device, int8_keep_fp32=tuple(int8_keep_fp32 or ()),
                           with_checkpoint=with_checkpoint, calibration_augment=calibration_augment,
                           calibration_augment_options=calibration_augment_options)
    except ValueError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2)
    from bmengine.training.checkpoint import UnsafeCheckpointError
    from bmengine.training.export import SplitNotFoundError
    from bmengine.training.quantize import CalibrationMemoryError, KeepFp32Error

    try:
        paths = run_export(cfg, log=lambda m: typer.echo(m, err=True))
    except (UnsafeCheckpointError, SplitNotFoundError) as err:  # refused before anything was written
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except (KeepFp32Error, CalibrationMemoryError) as err:  # found after the fp32 export, removed again
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    for precision, path in paths.items():
        typer.echo(f"{precision}: {path}")


def register(app: typer.Typer) -> None:
    app.command("export")(export)
