"""Is the crop in colour? The classifiers read stain colour (eosinophil granules, basophil
granules, blue cytoplasm); a grey picture of a cell is not something they were trained on."""

from __future__ import annotations

import numpy as np

MIN_CHROMA = 5.0
"""Mean over pixels of (largest - smallest channel), in grey levels. A grey crop stored as RGB
(three equal channels, or a grey JPEG decoded to RGB) scores 0-2; the least coloured real crops
score 15 (PBC, 2,000 clean crops), 17 (tecom), 20 (Matek), 45 (CellaVision blog)."""


def chroma(images: np.ndarray) -> np.ndarray:
    """Mean (max - min) over the channels, per crop, on every second pixel (enough for a mean)."""
    x = np.asarray(images)[:, ::2, ::2]
    r, g, b = x[..., 0], x[..., 1], x[..., 2]  # channel by channel: NumPy is slow over a last axis of 3
    spread = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    return spread.mean(axis=(1, 2), dtype=np.float32)


def not_colour(images: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """The file holds one or two channels (grey, grey + alpha), or its colours are all grey."""
    return (shapes[:, 2] < 3) | (chroma(images) < MIN_CHROMA)
