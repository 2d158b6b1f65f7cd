"""Crops with nothing to see: a uniform picture, or one washed out white or sunk in black.

Brightness is the mean of the three channels, on every second pixel (enough for these statistics).
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


def _sample(images: np.ndarray) -> np.ndarray:
    return np.asarray(images)[:, ::2, ::2]


def _brightness(images: np.ndarray) -> np.ndarray:
    x = _sample(images)  # channel by channel: NumPy is slow over a last axis of 3
    return (x[..., 0].astype(np.float32) + x[..., 1] + x[..., 2]) / 3


def blank(images: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Brightness varies by less than ``MIN_CONTRAST`` grey levels (standard deviation)."""
    return _brightness(images).std(axis=(1, 2)) < MIN_CONTRAST


def overexposed(images: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """More than ``MAX_CLIPPED`` of the pixels are clipped white."""
    x = _sample(images)
    darkest = np.minimum(np.minimum(x[..., 0], x[..., 1]), x[..., 2])
    return (darkest >= 250).mean(axis=(1, 2)) > MAX_CLIPPED


def underexposed(images: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """The mean brightness is under ``MIN_BRIGHTNESS``."""
    return _brightness(images).mean(axis=(1, 2)) < MIN_BRIGHTNESS
