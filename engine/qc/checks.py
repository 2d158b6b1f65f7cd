"""The registry of crop quality checks: flag name -> check, in the order flags are written.

A check takes the batch of resized, uncropped uint8 crops (N, H, W, 3) and the original shape of
each crop as its file header gave it (N, 3: height, width, channels) and returns one bool per
crop: True = flag it. A lab adds a check by adding an entry.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from bmengine.engine.qc.colour import not_colour
from bmengine.engine.qc.exposure import blank, overexposed, underexposed
from bmengine.engine.qc.garbled import garbled
from bmengine.engine.qc.size import elongated, too_large, too_small

Check = Callable[[np.ndarray, np.ndarray], np.ndarray]

CHECKS: dict[str, Check] = {
    "too_small": too_small,
    "too_large": too_large,
    "elongated": elongated,
    "not_colour": not_colour,
    "blank": blank,
    "overexposed": overexposed,
    "underexposed": underexposed,
    "garbled": lambda images, shapes: garbled(images),
}
