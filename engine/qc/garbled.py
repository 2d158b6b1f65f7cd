"""Garbled crops: JPEG damage that decodes without error (``damage.py`` makes such crops).

After a bad byte the decoder runs on out of step, in raster order, to the end of the scan (or to
the next restart marker): everything after the damage point comes out shifted, in another colour,
as another picture's data, or as a flat fill. On the resized crop this leaves one of four traces,
each scored per crop from one pass over the batch (NumPy, vectorised):

- ``row_seam``: one row boundary changes far more than the rows around it (the original check);
- ``column_seam``: the same sideways: blocks shifted along a row leave a vertical edge;
- ``colour_step``: most of the width changes colour at once, the same way (a drifted DC term);
- ``flat_rows``: rows of one exact colour, which decoders write when the data runs out.

A crop is garbled when any score passes its threshold in ``GARBLED_THRESHOLDS``.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from bmengine.engine.qc.seams import SEAM_THRESHOLD

GARBLED_THRESHOLDS: dict[str, float] = {
    "row_seam": SEAM_THRESHOLD,
    "column_seam": 2.2,
    "colour_step": 7.0,
    "flat_rows": 0.02,
}
"""Set on the 'tune' half of PBC (the functions of ``benchmarks/qc_corpus.py --split tune``: 2,000
clean crops and 100 damaged ones of each kind, QC images of 128 and 144 px) by a grid search: the
fewest damaged crops missed while at most 5 of the 2,000 clean ones are flagged at either size,
all 8 garbled Matek crops flagged and none of the 36 clean ones. The worst clean PBC crop scores
row_seam 2.4, column_seam 2.5, colour_step 8.0, flat_rows 0.01 (one flat row); ``row_seam``
keeps its original 3.0. Measured on the other half: ``benchmarks/results/qc-damaged-jpeg-corpus.md``."""

MIN_SIDE_ALL_TRACES = 128
"""Column seams and colour steps read texture at the QC image's scale and were set at 128-144 px
(they hold at 224). Smaller, their clean scores climb: at 112 px 0.7% of clean PBC crops and one of
36 clean Matek crops would be flagged, at 72 px 10%. A QC image under 128 px is judged on row seams
and flat rows alone (0.25% of clean PBC flagged at 72 px), which miss more damage: the QC image
should be 128 px or more whatever the model's input size."""

SCALE_FREE_TRACES = ("row_seam", "flat_rows")

_K = 3  # neighbouring boundaries on each side that a boundary is compared with
_FLAT = 1  # grey levels: a row whose neighbouring pixels never differ by more is flat


def _neighbour_ratio(profile: np.ndarray, gap: int, k: int = _K, grey: float = 1.0) -> np.ndarray:
    """Per crop, the largest value of a boundary profile (N, R) over the median of its neighbours.

    The neighbours are the ``k`` boundaries on each side from ``gap`` away (nearer ones share the
    rows a boundary compares); ``grey`` keeps flat regions from dividing by ~0.
    """
    reach = gap + k - 1
    padded = np.pad(profile, ((0, 0), (reach, reach)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * reach + 1, axis=1)
    picks = [reach - d for d in range(gap, reach + 1)] + [reach + d for d in range(gap, reach + 1)]
    local = np.median(windows[:, :, picks], axis=2)
    return (profile / (local + grey)).max(axis=1)


def _row_change(down: np.ndarray) -> np.ndarray:
    """Mean absolute change across each row boundary: (N, H-1, W, C) -> (N, H-1)."""
    n, r = down.shape[:2]
    return np.abs(down).reshape(n, r, -1).sum(axis=2, dtype=np.int32) / np.float32(down[0, 0].size)


def _column_change(across: np.ndarray) -> np.ndarray:
    """Mean absolute change across each column boundary: (N, H, W-1, C) -> (N, W-1)."""
    total = np.abs(across).sum(axis=1, dtype=np.int32).sum(axis=2)
    return total / np.float32(across.shape[1] * across.shape[3])


def _shared_shift(change: np.ndarray) -> np.ndarray:
    """Per boundary, the largest per-channel median of a signed change (N, R, W, C) over the width.

    A colour shift that most of the width shares; a cell's edge covers only part of a row, so the
    median ignores it. Every second column is enough for a median and halves the cost (the
    partial sort is most of this module's time).
    """
    columns = np.ascontiguousarray(change[:, :, ::2].transpose(0, 1, 3, 2))  # (N, R, C, W/2), a copy
    upper, lower = columns.shape[-1] // 2, (columns.shape[-1] - 1) // 2
    columns.partition((lower, upper), axis=-1)
    median = (columns[..., lower] + columns[..., upper].astype(np.float32)) / 2
    return np.abs(median).max(axis=2)


def _flat_fraction(bumpiest: np.ndarray, level: np.ndarray) -> np.ndarray:
    """Fraction of rows that are one colour, not clipped white or black; 0 when every row is
    (a crop that is all flat is blank, not garbled)."""
    fraction = ((bumpiest <= _FLAT) & (level > 5) & (level < 250)).mean(axis=1)
    return np.where(fraction < 1.0, fraction, 0.0)


def garbled_profiles(images: np.ndarray) -> dict[str, np.ndarray]:
    """The per-row and per-boundary profiles the traces are read from, for an NHWC uint8 batch:
    ``row_change`` (N, H-1), ``column_change`` (N, W-1), ``shared_shift`` (N, H-2), and per row
    ``bumpiest`` (N, H; largest change between neighbouring pixels) and ``level`` (N, H; mean).
    These are the pixel-heavy part; kernels/garbled_profiles.py computes the same on a GPU batch
    so only these few numbers per crop leave the GPU."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected an NHWC batch of RGB images, got shape {x.shape}")
    n, h = x.shape[:2]
    x = x.astype(np.int16)
    down = x[:, 1:] - x[:, :-1]  # change from each row to the next
    across = x[:, :, 1:] - x[:, :, :-1]  # from each column to the next
    two_down = down[:, 1:] + down[:, :-1]  # to the row after next: a step the resize spread over two
    return {
        "row_change": _row_change(down),
        "column_change": _column_change(across),
        "shared_shift": _shared_shift(two_down),
        "bumpiest": np.abs(across).reshape(n, h, -1).max(axis=2),
        "level": x.reshape(n, h, -1).mean(axis=2, dtype=np.float32),
    }


def scores_from_profiles(profiles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every trace of damage per crop from its profiles (cheap: a few hundred numbers per crop)."""
    return {
        "row_seam": _neighbour_ratio(np.asarray(profiles["row_change"]), gap=1),
        "column_seam": _neighbour_ratio(np.asarray(profiles["column_change"]), gap=1),
        "colour_step": _neighbour_ratio(np.asarray(profiles["shared_shift"]), gap=2, k=_K + 1),
        "flat_rows": _flat_fraction(np.asarray(profiles["bumpiest"]), np.asarray(profiles["level"])),
    }


def garbled_scores(images: np.ndarray) -> dict[str, np.ndarray]:
    """Every trace of damage for every crop of an NHWC uint8 batch, by name (for tuning, too)."""
    return scores_from_profiles(garbled_profiles(images))


def garbled(images: np.ndarray, thresholds: Mapping[str, float] | None = None) -> np.ndarray:
    """True where any trace of damage passes its threshold (``GARBLED_THRESHOLDS`` by default)."""
    return garbled_from_scores(garbled_scores(images), np.shape(images)[1:3], thresholds)


def garbled_from_scores(scores: dict[str, np.ndarray], size: tuple[int, int],
                        thresholds: Mapping[str, float] | None = None) -> np.ndarray:
    """True where any trace passes its threshold; ``size``: (height, width) of the QC images."""
    limits = GARBLED_THRESHOLDS if thresholds is None else thresholds
    if min(size) < MIN_SIDE_ALL_TRACES:
        limits = {name: limit for name, limit in limits.items() if name in SCALE_FREE_TRACES}
    return np.any([scores[name] > limit for name, limit in limits.items()], axis=0)
