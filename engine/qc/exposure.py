"""Crops with nothing to see: a uniform picture, or one washed out white or sunk in black.

Brightness is the mean of the three channels, on every second pixel (enough for these statistics;
computed in engine/qc/stats.py).
"""

from __future__ import annotations

import numpy as np

MIN_CONTRAST = 5.0
"""Standard deviation of brightness, in grey levels: a crop under 5 is uniform (blank). The
flattest real crops are at 15 (PBC), 25 (Matek), 30 (wbc_zheng)."""

MAX_CLIPPED = 0.95
"""Fraction of pixels clipped white (every channel >= 250): above 95% the cell, if any, covers
under 5% of the crop. Tecom's white-background crops reach 78%; PBC and Matek 0-2%."""

MIN_BRIGHTNESS = 40.0
"""Mean brightness: a bright-field smear under 40 is far too dark to read. The darkest real crops
average 84 (a garbled Matek crop) and 95 (a clean one)."""


def blank(stats, shapes: np.ndarray) -> np.ndarray:
    """Brightness varies by less than ``MIN_CONTRAST`` grey levels (standard deviation)."""
    return stats.brightness_std < MIN_CONTRAST


def overexposed(stats, shapes: np.ndarray) -> np.ndarray:
    """More than ``MAX_CLIPPED`` of the pixels are clipped white."""
    return stats.clipped_fraction > MAX_CLIPPED


def underexposed(stats, shapes: np.ndarray) -> np.ndarray:
    """The mean brightness is under ``MIN_BRIGHTNESS``."""
    return stats.brightness_mean < MIN_BRIGHTNESS
