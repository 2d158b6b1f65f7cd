"""What every registered QC check reads, per crop: a handful of numbers, not the pixels.

On the CPU they come from the QC images (``QcStats.from_images``, NumPy). On the GPU the Triton
kernel kernels/garbled_profiles.py computes per-row profiles on the device and only those cross to
the host (``QcStats.from_row_profiles``), so the QC images never leave the GPU. Both give the
same verdicts (tests/test_triton_kernels.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bmengine.engine.qc.garbled import garbled_scores, scores_from_profiles


@dataclass(frozen=True)
class QcStats:
    size: tuple[int, int]  # (height, width) of the QC images
    garbled: dict[str, np.ndarray]  # trace name -> score per crop (engine/qc/garbled.py)
    brightness_mean: np.ndarray  # over every second pixel, mean of the three channels
    brightness_std: np.ndarray
    clipped_fraction: np.ndarray  # pixels with every channel >= 250
    chroma: np.ndarray  # mean (largest - smallest channel)

    def __len__(self) -> int:
        return len(self.chroma)

    @classmethod
    def from_images(cls, images: np.ndarray) -> "QcStats":
        """From resized uint8 NHWC QC images (the CPU path)."""
        x = np.asarray(images)[:, ::2, ::2]
        brightness = (x[..., 0].astype(np.float32) + x[..., 1] + x[..., 2]) / 3  # channel by channel: fast
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        darkest = np.minimum(np.minimum(r, g), b)
        spread = np.maximum(np.maximum(r, g), b) - darkest
        return cls(tuple(np.shape(images)[1:3]), garbled_scores(images), brightness.mean(axis=(1, 2)),
                   brightness.std(axis=(1, 2)), (darkest >= 250).mean(axis=(1, 2)),
                   spread.mean(axis=(1, 2), dtype=np.float32))

    @classmethod
    def from_row_profiles(cls, profiles: dict[str, np.ndarray], size: tuple[int, int]) -> "QcStats":
        """From the GPU kernel's per-row profiles, on the host (``row_stats``: per row, over every
        second pixel, sums of brightness, brightness squared, clipped-white pixels and chroma)."""
        sums = np.asarray(profiles["row_stats"])[:, ::2].astype(np.float64).sum(axis=1)  # every second row
        pixels = float(((size[0] + 1) // 2) * ((size[1] + 1) // 2))
        mean = sums[:, 0] / pixels
        std = np.sqrt(np.maximum(sums[:, 1] / pixels - mean**2, 0.0))
        return cls(tuple(size), scores_from_profiles(profiles), mean, std, sums[:, 2] / pixels, sums[:, 3] / pixels)
