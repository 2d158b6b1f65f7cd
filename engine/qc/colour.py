"""Is the crop in colour? The classifiers read stain colour (eosinophil granules, basophil
granules, blue cytoplasm); a grey picture of a cell is not something they were trained on."""

from __future__ import annotations

import numpy as np

MIN_CHROMA = 5.0
"""Mean over pixels of (largest - smallest channel), in grey levels. A grey crop stored as RGB
(three equal channels, or a grey JPEG decoded to RGB) scores 0-2; the least coloured real crops
score 15 (PBC, 2,000 clean crops), 17 (tecom), 20 (Matek), 45 (CellaVision blog)."""


def not_colour(stats, shapes: np.ndarray) -> np.ndarray:
    """The file holds one or two channels (grey, grey + alpha), or its colours are all grey
    (``stats.chroma``: mean over every second pixel of largest - smallest channel)."""
    return (shapes[:, 2] < 3) | (stats.chroma < MIN_CHROMA)
