"""Image quality checks on decoded crops; a flagged crop is kept in the cells table but not counted.

``quality_flags`` is the engine's one entry point per batch; the checks it runs are registered in
``checks.CHECKS``. ``garbled_flags`` / ``seam_scores`` are the original row-seam check alone.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from bmengine.engine.qc.checks import CHECKS
from bmengine.engine.qc.seams import SEAM_THRESHOLD, garbled_flags, seam_scores
from bmengine.engine.qc.stats import QcStats


def quality_flags(qc: np.ndarray | QcStats, original_shapes: Sequence[tuple[int, int, int]]) -> list[str]:
    """Per crop, the names of the checks it fails joined by ";" ("" when it passes them all).

    ``qc`` (``Decoded.qc``): the resized, uncropped uint8 NHWC batch (CPU), or its ``QcStats``
    computed on the GPU; ``original_shapes``: (height, width, channels) of each crop from its file
    header, before decoding (channels 1 for a grey image, 2 grey + alpha, 3 RGB, 4 RGBA; a palette
    image counts as 3).
    """
    shapes = np.asarray(original_shapes, dtype=np.int64)
    if not isinstance(qc, QcStats):
        images = np.asarray(qc)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected an NHWC uint8 RGB batch, got {images.dtype} {images.shape}")
        if len(images) == 0 and shapes.size == 0:
            return []
        if shapes.shape != (len(images), 3):
            raise ValueError(f"{len(images)} crops need {len(images)} (height, width, channels), got {shapes.shape}")
        qc = QcStats.from_images(images)
    elif shapes.shape != (len(qc), 3):
        raise ValueError(f"{len(qc)} crops need {len(qc)} (height, width, channels), got {shapes.shape}")
    failed = {name: np.asarray(check(qc, shapes), dtype=bool) for name, check in CHECKS.items()}
    return [";".join(name for name, hit in failed.items() if hit[i]) for i in range(len(qc))]


__all__ = ["CHECKS", "SEAM_THRESHOLD", "QcStats", "garbled_flags", "quality_flags", "seam_scores"]
