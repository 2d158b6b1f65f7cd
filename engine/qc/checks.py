"""The registry of crop quality checks: flag name -> check, in the order flags are written.

A check takes the batch's ``QcStats`` (engine/qc/stats.py: per crop, the numbers the checks read,
from the QC images on the CPU or from the GPU kernel's profiles) and the original shape of each
crop as its file header gave it (N, 3: height, width, channels) and returns one bool per crop:
True = flag it. A lab adds a check by adding an entry (and, if it needs a new number, a field of
``QcStats`` computed on both paths).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from bmengine.engine.qc.colour import not_colour
from bmengine.engine.qc.exposure import blank, overexposed, underexposed
from bmengine.engine.qc.garbled import garbled_from_scores
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
    "garbled": lambda stats, shapes: garbled_from_scores(stats.garbled, stats.size),
}
