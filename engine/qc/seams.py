"""Detect garbled crops: JPEG damage that decodes without error but leaves a horizontal seam.

Damaged JPEGs in real archives (shifted MCU rows, wrong colours, a stripe of another image —
see ../shared/data/bm_samples) share one trait: across the full width, one row boundary changes
far more than the rows around it. The score is the strongest row-to-row change divided by the
median change of its neighbouring rows, measured on the resized crop before the centre crop (a
seam near the border would otherwise be cut away). At 128 px: the 36 clean Matek samples score
<= 1.47, the 8 known-bad ones >= 3.94, and 2,000 clean PBC crops <= 2.42; the threshold is 3.0.
It is one of the four traces that ``garbled.py`` looks for (the row seam misses about half of
damaged crops that are not as plain as those 8: a shift sideways, a soft change of colour).
"""

from __future__ import annotations

import numpy as np

SEAM_THRESHOLD = 3.0
_NEIGHBOURS = 3


def seam_scores(batch: np.ndarray, grey_level: float = 1.0) -> np.ndarray:
    """Score each image of an NCHW (or NHWC) batch; higher = more likely garbled.

    ``grey_level`` is one 8-bit grey step in the batch's units (1.0 for uint8 pixels,
    ``1 / (255 * std)`` for normalised network input): flat backgrounds must not divide by ~0.
    """
    x = np.asarray(batch, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"expected a 4-d batch, got shape {x.shape}")
    if x.shape[-1] == 3 and x.shape[1] != 3:  # NHWC -> NCHW
        x = x.transpose(0, 3, 1, 2)
    rows = np.abs(np.diff(x, axis=2)).mean(axis=(1, 3))  # (N, H-1): mean change across each boundary
    k = _NEIGHBOURS
    padded = np.pad(rows, ((0, 0), (k, k)), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * k + 1, axis=1)  # (N, H-1, 2k+1)
    neighbours = np.delete(windows, k, axis=2)
    local = np.median(neighbours, axis=2)
    return (rows / (local + grey_level)).max(axis=1)


def garbled_flags(batch: np.ndarray, grey_level: float = 1.0, threshold: float = SEAM_THRESHOLD) -> list[str]:
    """QC flag per image: "garbled" where the seam score passes the threshold, else ""."""
    return ["garbled" if s > threshold else "" for s in seam_scores(batch, grey_level)]
