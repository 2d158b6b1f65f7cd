"""Figures of an evaluation: confusion matrix (CSV + PNG) and one-vs-rest precision-recall curves."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd

from bmengine.engine.outputs.atomic import atomic_path, atomic_write_bytes
from bmengine.engine.metrics import confusion_matrix, precision_recall_curve


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def write_evaluation_figures(out_dir: Path, y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    cm = confusion_matrix(y_true, probs.argmax(axis=1), len(classes))
    table = pd.DataFrame(cm, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted"))
    with atomic_path(out_dir / "confusion_matrix.csv") as tmp:
        table.to_csv(tmp)

    fig = _figure(1.0 + 0.55 * len(classes), 0.8 + 0.5 * len(classes))
    ax = fig.add_subplot()
    rows = np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(cm / rows, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(cm):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=7, color="white" if n / rows[i, 0] > 0.5 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row-normalised colour, counts written)")
    atomic_write_bytes(out_dir / "confusion_matrix.png", _png(fig))

    fig = _figure(6.5, 5)
    ax = fig.add_subplot()
    for i, name in enumerate(classes):
        if (y_true == i).any():
            curve = precision_recall_curve(y_true == i, probs[:, i])
            ax.plot(curve["recall"], curve["precision"], label=f"{name} (AP {curve['average_precision']:.3f})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=7, loc="lower left")
    atomic_write_bytes(out_dir / "pr_curves.png", _png(fig))
    return {name: str(out_dir / name) for name in ("confusion_matrix.csv", "confusion_matrix.png", "pr_curves.png")}
