"""Weight interpolation of two checkpoints of one network (WiSE-FT, Wortsman et al., CVPR 2022).

A model trained for robustness (here: the cross-lab augmentation) and the same model after a short
clean pass over its own lab's crops sit in one basin of the loss; the straight line between their
weights keeps most of the first one's robustness and most of the second one's in-lab accuracy.
``interpolate`` writes ``(1 - alpha) * base + alpha * tuned`` as a run folder that ``bmengine export``
reads like any other: the tuned run's split, config and history, and where the weights came from.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from bmengine.training.checkpoint import load_checkpoint, provenance
from bmengine.training.trainer import _save, command_line

INTERPOLATE_KEYS = ("model", "model_spec", "config", "classes", "taxonomy", "epoch", "history")


class InterpolateError(ValueError):
    """The two checkpoints are not one network with one class list; nothing was written."""


@dataclass(frozen=True)
class InterpolateConfig:
    base: Path  # the robust model (e.g. the cross-lab run's last.pt)
    tuned: Path  # the same network trained further (e.g. `bmengine train --init-from base`)
    alpha: float  # 0: base, 1: tuned
    out: Path  # run folder; the checkpoint goes to out/checkpoints/last.pt

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise InterpolateError(f"--alpha must be in [0, 1], not {self.alpha}")


def interpolate_weights(base: dict, tuned: dict, alpha: float) -> dict:
    """Float tensors on the line between the two; integer ones (batch-norm step counters) the tuned model's."""
    if base.keys() != tuned.keys():
        odd = sorted(set(base) ^ set(tuned))[:5]
        raise InterpolateError(f"the checkpoints hold different layers (e.g. {odd})")
    mixed = {}
    for key, theirs in tuned.items():
        mine = base[key]
        if mine.shape != theirs.shape:
            raise InterpolateError(f"layer {key}: shape {tuple(mine.shape)} against {tuple(theirs.shape)}")
        mixed[key] = torch.lerp(mine.float(), theirs.float(), alpha).to(theirs.dtype) if theirs.is_floating_point() \
            else theirs.clone()
    return mixed


def interpolate(cfg: InterpolateConfig) -> Path:
    """Write the interpolated checkpoint (and the tuned run's split) under ``cfg.out``; returns its path."""
    base = load_checkpoint(cfg.base, require=INTERPOLATE_KEYS)
    tuned = load_checkpoint(cfg.tuned, require=INTERPOLATE_KEYS)
    for key in ("model_spec", "classes", "taxonomy"):
        if base[key] != tuned[key]:
            raise InterpolateError(f"{cfg.base} and {cfg.tuned} differ in {key}: {base[key]} against {tuned[key]}")
    split = Path(cfg.tuned).resolve().parents[1] / "split.json"
    if not split.is_file():  # export scores on the run's validation split and calibrates on its training split
        raise InterpolateError(f"{split}: the tuned run's split is missing; export needs it")
    state = dict(tuned, model=interpolate_weights(base["model"], tuned["model"], cfg.alpha),
                 config=dict(tuned["config"], run_dir=str(cfg.out)), command=command_line(sys.argv),
                 interpolated={"alpha": cfg.alpha, "base": provenance(cfg.base, base),
                               "tuned": provenance(cfg.tuned, tuned)})
    for stale in ("optimizer", "val_report", "best_macro_f1"):  # described the tuned weights, not these
        state.pop(stale, None)
    out = Path(cfg.out) / "checkpoints" / "last.pt"
    _save(state, out)  # atomic, as every trainer checkpoint; the card carries state["interpolated"]
    shutil.copyfile(split, Path(cfg.out) / "split.json")
    return out
