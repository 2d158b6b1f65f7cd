"""Checks on a crop's size as its file header gives it (before decoding): is it one cell's crop?

Single-cell crops in every data set we hold are 88 to 369 px a side and nearly square: wbc_zheng
tecom 88-120 px (at most 1.25:1), Matek 250x250, CellaVision (blog) 300x300, PBC 360x363.
"""

from __future__ import annotations

import numpy as np

MIN_SIDE = 64
"""Below 64 px on the short side a 10-15 um white cell spans under ~50 px: too few to show its
nucleus lobes or granules, and the engine would blow it up 2x or more. The smallest real crops
(tecom, 88 px) stay clear of it; a 1x1 or 20x20 "crop" is caught."""

MAX_SIDE = 2048
"""Above 2,048 px on the long side it is a whole camera field (or a decompression bomb), not a
crop: more than 5x the largest cell crop we know (PBC, 369 px)."""

MAX_ASPECT = 2.0
"""Longer than twice its width: resized square, a cell in it would be squashed 2x. Real crops
are at most 1.25:1 (tecom)."""


def too_small(stats, shapes: np.ndarray) -> np.ndarray:
    """The short side of the original crop is under ``MIN_SIDE`` px."""
    return shapes[:, :2].min(axis=1) < MIN_SIDE


def too_large(stats, shapes: np.ndarray) -> np.ndarray:
    """The long side of the original crop is over ``MAX_SIDE`` px."""
    return shapes[:, :2].max(axis=1) > MAX_SIDE


def elongated(stats, shapes: np.ndarray) -> np.ndarray:
    """The original crop is more than ``MAX_ASPECT`` times as long as it is wide."""
    sides = shapes[:, :2]
    return sides.max(axis=1) > MAX_ASPECT * np.maximum(sides.min(axis=1), 1)
