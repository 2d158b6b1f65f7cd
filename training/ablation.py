"""Ablations with one command: a grid of backbone x attention x loss at a stated budget.

Each configuration trains in its own run folder (resumable: a finished one is not retrained),
is scored on the same stratified validation split, and is exported to ONNX to measure inference
img/s on this machine. The table has the columns of Hu et al.'s Tables 4-7 (top-1, top-5, macro
precision/recall/F1) plus img/s, and is written as CSV and Markdown with the exact command.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from bmengine.engine.bench import machine_words
from bmengine.training.trainer import TrainConfig, command_line, scan_training_data, train

METRICS = ("accuracy", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1")


@dataclass
class AblationConfig:
    data_dir: str
    out_dir: str
    backbones: list[str] = field(default_factory=lambda: ["regnetx_032"])
    attentions: list[str] = field(default_factory=lambda: ["none", "se"])
    losses: list[str] = field(default_factory=lambda: ["ce", "cost_sensitive"])
    design: str = "grid"  # grid: every combination | sweep: one factor at a time around the first of each list
    epochs: int = 3
    resize: int = 72
    crop: int = 64
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0
    limit_per_class: int | None = None
    max_steps_per_epoch: int | None = None
    timing_batch: int = 32
    timing_repeats: int = 5


def _supports_attention(backbone: str) -> bool:
    return backbone.startswith(("regnet", "resnet", "resnext"))


def inference_img_per_s(onnx_path: Path, crop: int, batch: int, repeats: int, threads: int = 2) -> float:
    """Median ONNX Runtime fp32 throughput on this CPU (after one warm-up run)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, crop, crop)).astype(np.float32)
    session.run(None, {"image": x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {"image": x})
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def configurations(cfg: AblationConfig) -> list[tuple[str, str, str]]:
    """The (backbone, attention, loss) runs of the design, without duplicates, in table order.

    ``sweep`` is the shape of the seed's Tables 4-7: the reference is the first backbone, attention
    and loss; each table replaces one of them. Backbones without attention slots run with ``none``.
    """
    if cfg.design == "grid":
        combos = itertools.product(cfg.backbones, cfg.attentions, cfg.losses)
    elif cfg.design == "sweep":
        b0, a0, l0 = cfg.backbones[0], cfg.attentions[0], cfg.losses[0]
        combos = itertools.chain(
            ((b, a0 if _supports_attention(b) else "none", l0) for b in cfg.backbones),
            ((b0, a, l0) for a in cfg.attentions),
            ((b0, a0, loss) for loss in cfg.losses),
        )
    else:
        raise ValueError(f"unknown ablation design {cfg.design!r}; use grid or sweep")
    return list(dict.fromkeys(combos))


BUDGET_FIELDS = ("data_dir", "epochs", "resize", "crop", "batch_size", "lr", "seed", "limit_per_class",
                 "max_steps_per_epoch")


def _check_same_budget(run_dir: Path, tcfg: TrainConfig) -> None:
    """A finished run is reused only under the budget it was trained with (else its row would lie)."""
    trained = json.loads((run_dir / "summary.json").read_text())["config"]
    wanted = asdict(tcfg)
    if differing := [f for f in BUDGET_FIELDS if trained.get(f) != wanted[f]]:
        changes = ", ".join(f"{f} {trained.get(f)!r} (now {wanted[f]!r})" for f in differing)
        raise ValueError(f"{run_dir} was trained with {changes}; use another --out for another budget")


def _one(cfg: AblationConfig, backbone: str, attention: str, loss: str, log: Callable[[str], None]) -> dict:
    from bmengine.training.checkpoint import load_model
    from bmengine.training.export import export_onnx

    run_dir = Path(cfg.out_dir) / "runs" / f"{backbone}__{attention}__{loss}"
    tcfg = TrainConfig(data_dir=cfg.data_dir, run_dir=str(run_dir), backbone=backbone, attention=attention,
                       loss=loss, epochs=cfg.epochs, resize=cfg.resize, crop=cfg.crop, batch_size=cfg.batch_size,
                       lr=cfg.lr, seed=cfg.seed, limit_per_class=cfg.limit_per_class,
                       max_steps_per_epoch=cfg.max_steps_per_epoch,
                       cache_dir=str(Path(cfg.out_dir) / "cache"))
    result_file = run_dir / "result.json"
    if result_file.is_file():  # finished earlier: keep its numbers (and its timing) as measured then
        _check_same_budget(run_dir, tcfg)
        log(f"{run_dir.name}: finished earlier, keeping {result_file}")
        return json.loads(result_file.read_text())
    summary = train(tcfg, resume=True, log=log)
    report = json.loads((run_dir / "metrics" / f"epoch_{cfg.epochs:03d}.json").read_text())["validation"]
    model, _ = load_model(run_dir / "checkpoints" / "last.pt")
    onnx_path = run_dir / "model.onnx"
    if not onnx_path.is_file():
        export_onnx(model, onnx_path, cfg.crop, opset=17)
    row = {
        "backbone": backbone, "attention": attention, "loss": loss,
        **{m: round(report[m], 4) for m in METRICS},
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "train_seconds": round(sum(h["seconds"] for h in summary["history"]), 1),
        "onnx_img_per_s": round(inference_img_per_s(onnx_path, cfg.crop, cfg.timing_batch, cfg.timing_repeats), 1),
        "machine": machine_words(),
    }
    result_file.write_text(json.dumps(row, indent=2))
    return row


def run_ablation(cfg: AblationConfig, log: Callable[[str], None] = print) -> pd.DataFrame:
    rows = []
    runs = configurations(cfg)
    scan_training_data(Path(cfg.data_dir), None)  # a data folder that cannot train is refused before the grid
    for n, (backbone, attention, loss) in enumerate(runs, 1):
        if attention != "none" and not _supports_attention(backbone):
            log(f"skip {backbone} + {attention}: attention goes into RegNet/ResNet-family backbones only")
            continue
        log(f"== [{n}/{len(runs)}] {backbone} + {attention} + {loss}")
        rows.append(_one(cfg, backbone, attention, loss, log))
        write_table(pd.DataFrame(rows), cfg)
    table = pd.DataFrame(rows).sort_values("macro_f1", ascending=False, kind="stable").reset_index(drop=True)
    write_table(table, cfg)
    return table


def _design_words(cfg: AblationConfig) -> str:
    if cfg.design == "sweep":
        return (f"reference {cfg.backbones[0]} + {cfg.attentions[0]} + {cfg.losses[0]}; each row changes one of the "
                "three, backbones without attention slots run without attention")
    return "every backbone x attention x loss combination"


def _sections(table: pd.DataFrame, cfg: AblationConfig) -> list[tuple[str, pd.DataFrame]]:
    """Sweep: one table per factor (the reference row in each); grid: one table of every run."""
    if cfg.design != "sweep":
        return [("All runs", table)]
    b0, a0, l0 = cfg.backbones[0], cfg.attentions[0], cfg.losses[0]
    return [
        (f"Backbones (attention {a0} where the backbone has slots, else none; loss {l0})",
         table[(table.loss == l0) & (table.attention == table.backbone.map(
             lambda b: a0 if _supports_attention(b) else "none"))]),
        (f"Attention ({b0}, loss {l0})", table[(table.backbone == b0) & (table.loss == l0)]),
        (f"Loss ({b0} + {a0})", table[(table.backbone == b0) & (table.attention == a0)]),
    ]


def _markdown_rows(table: pd.DataFrame) -> list[str]:
    lines = ["| backbone | attention | loss | top-1 | top-5 | macro P | macro R | macro F1 | params (M) | "
             "train (min) | img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.backbone} | {r.attention} | {r.loss} | {r.accuracy:.2%} | {r.top5_accuracy:.2%} | "
                     f"{r.macro_precision:.2%} | {r.macro_recall:.2%} | {r.macro_f1:.2%} | {r.params_M} | "
                     f"{r.train_seconds / 60:.1f} | {r.onnx_img_per_s:.0f} |")
    return lines


def write_table(table: pd.DataFrame, cfg: AblationConfig) -> None:
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = table.sort_values("macro_f1", ascending=False, kind="stable").reset_index(drop=True)
    table.to_csv(out / "ablation.csv", index=False)
    machines = sorted(set(table.get("machine", pd.Series(dtype=str)).dropna())) or [machine_words()]
    lines = [
        "# Ablation: backbone x attention x loss",
        "",
        f"Command: `{command_line(sys.argv)}`",
        "",
        f"Design: {cfg.design} ({_design_words(cfg)}). "
        f"Budget: {cfg.epochs} epochs from scratch, {cfg.crop} px crops of {cfg.resize} px resized cells, "
        f"batch {cfg.batch_size}, lr {cfg.lr}, seed {cfg.seed}; validation: the stratified 20% split, never "
        f"trained on. Training minutes and img/s (ONNX Runtime fp32, batch {cfg.timing_batch}, median of "
        f"{cfg.timing_repeats}) measured on {' and '.join(machines)}. Rows within a table are sorted by macro F1.",
    ]
    for title, rows in _sections(table, cfg):
        lines += ["", f"## {title}", "", *_markdown_rows(rows)]
    if len(table) >= 6:
        best, worst = table.head(3), table.tail(3)
        name = lambda r: f"{r.backbone} + {r.attention} + {r.loss} ({r.macro_f1:.2%})"  # noqa: E731
        lines += ["", f"Best 3 of {len(table)} by macro F1: " + "; ".join(name(r) for r in best.itertuples()) + ".",
                  "Worst 3: " + "; ".join(name(r) for r in worst.itertuples()) + "."]
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    (out / "ablation_config.json").write_text(json.dumps(asdict(cfg), indent=2))
