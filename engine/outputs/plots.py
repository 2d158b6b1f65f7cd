"""The per-slide cell histogram: one bar per class with its exact 95% interval.

Drawn on a bare Agg canvas (no pyplot), so plotting never touches global backend state and
works on headless machines and in worker threads.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bmengine.engine.outputs.atomic import atomic_write_bytes
from bmengine.engine.taxonomy import Taxonomy

BASE_COLOUR = "#3b6ea5"
EXCLUDED_COLOUR = "#b8b8b8"
TRUTH_COLOUR = "#c0392b"


def _value(row: dict, key: str) -> float:
    value = row.get(key)
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def truth_from_row(row: dict, taxonomy: Taxonomy) -> dict[str, float] | None:
    """Known-truth percentages carried by the row (from labels), if any."""
    truth = {c: _value(row, f"true_pct_{c}") for c in taxonomy.classes}
    return truth if any(np.isfinite(v) for v in truth.values()) else None


def _finite_max(values, floor: float = 1.0) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return max(floor, float(arr.max())) if arr.size else floor


def _positions(taxonomy: Taxonomy) -> tuple[list[str], np.ndarray, int]:
    """Base classes first, then a one-bar gap, then the excluded classes (reported per 100 base cells)."""
    base = list(taxonomy.counted)
    excluded = [c for c in taxonomy.classes if c in taxonomy.excluded]
    x = np.array(list(range(len(base))) + [len(base) + 1 + i for i in range(len(excluded))], dtype=float)
    return base + excluded, x, len(base)


def _error_bars(row: dict, classes: list[str], pct: np.ndarray) -> np.ndarray:
    low = np.array([_value(row, f"ci_low_{c}") for c in classes])
    high = np.array([_value(row, f"ci_high_{c}") for c in classes])
    high = np.where(np.isfinite(high), high, np.nan)  # an unbounded per-base interval has no bar end
    return np.nan_to_num(np.vstack([pct - low, high - pct]), nan=0.0).clip(min=0.0)


def _draw(fig: Figure, row: dict, taxonomy: Taxonomy, title: str, truth: dict[str, float] | None) -> None:
    classes, x, n_base_classes = _positions(taxonomy)
    pct = np.array([_value(row, f"pct_{c}") for c in classes])
    counts = [row.get(f"count_{c}", 0) for c in classes]
    colours = [BASE_COLOUR if c not in taxonomy.excluded else EXCLUDED_COLOUR for c in classes]
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(x, np.nan_to_num(pct), color=colours, edgecolor="#333333", linewidth=0.5,
                  yerr=_error_bars(row, classes, pct), capsize=3, error_kw={"elinewidth": 0.9},
                  label="predicted % (95% CI)")
    for bar, c in zip(bars, classes):
        if c in taxonomy.excluded:
            bar.set_hatch("//")
    top = _finite_max([_value(row, f"ci_high_{c}") for c in classes] + list(pct))
    for xi, n, p, c in zip(x, counts, pct, classes):
        inside = p > top * 0.08 and c not in taxonomy.excluded
        ax.text(xi, 0.0, f"{n}", ha="center", va="bottom", fontsize=7, color="white" if inside else "black")
    if truth:
        t = np.array([float(truth.get(c, math.nan)) for c in classes])
        ax.scatter(x, t, marker="D", s=22, color=TRUTH_COLOUR, zorder=3, label="known truth %")
        top = max(top, _finite_max(t))
    if len(classes) > n_base_classes:
        ax.axvline(n_base_classes, color="#666666", linestyle="--", linewidth=0.8)
        ax.text(n_base_classes + 0.2, top * 1.08, "outside base:\nper 100 base cells", fontsize=7, va="top")
    ax.set_ylim(0, top * 1.12)
    tilt = len(classes) > 10 or max(map(len, classes)) > 8
    ax.set_xticks(x, classes, rotation=45 if tilt else 0, ha="right" if tilt else "center", fontsize=8)
    ax.set_ylabel("% of base (bars: 95% exact CI)")
    ax.set_title(title, fontsize=10, loc="left", y=1.03)  # a fixed y: no search for overlaps per plot
    if not np.isfinite(pct).any():
        ax.text(0.5, 0.5, "no cells counted", transform=ax.transAxes, ha="center", fontsize=12)
    ax.legend(fontsize=7, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    # fixed margins in inches (not tight_layout: measuring every label cost a third of each plot)
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.15 / width, top=1 - 0.55 / height,
                        bottom=(0.95 if tilt else 0.45) / height)


def histogram_png(row: dict, taxonomy: Taxonomy, title: str, truth: dict[str, float] | None = None) -> bytes:
    """The histogram as PNG bytes (``truth``: class -> % markers; default: the row's true_pct_)."""
    truth = truth if truth is not None else truth_from_row(row, taxonomy)
    fig = Figure(figsize=(max(6.0, 0.42 * len(taxonomy.classes) + 2.5), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    _draw(fig, row, taxonomy, title, truth)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def plot_histogram(row: dict, taxonomy: Taxonomy, path: Path, title: str,
                   truth: dict[str, float] | None = None) -> Path:
    """Write the slide's histogram PNG atomically; returns ``path``."""
    path = Path(path)
    atomic_write_bytes(path, histogram_png(row, taxonomy, title, truth))
    return path
