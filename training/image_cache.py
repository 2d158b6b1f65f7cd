"""Decode a dataset once, through the engine's own DALI pipeline, into a uint8 array.

Training on 2 CPU cores cannot afford JPEG decoding every epoch; and decoding with the engine's
pipeline means the model trains on exactly the resampling it will see in production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec


def decode_files(
    files: Sequence[Path],
    size: int,
    batch_size: int = 128,
    num_threads: int = 2,
    progress: Callable[[int], None] | None = None,
    hue_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, list[str | None]]:
    """Return uint8 (N, size, size, 3) images resized to ``size`` (hue-mapped if asked) and errors."""
    spec = PipelineSpec(resize=size, crop=size, mean=(0, 0, 0), std=(1, 1, 1), normalize=False,
                        batch_size=batch_size, num_threads=num_threads, hue_range=hue_range)
    pipe = CropPipeline(spec)
    images = np.zeros((len(files), size, size, 3), dtype=np.uint8)
    errors: list[str | None] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        batch, errs = pipe.decode_to_numpy([Path(f).read_bytes() for f in chunk])
        images[start : start + len(chunk)] = batch
        errors += [None if e is None else f"{chunk[i]}: {e}" for i, e in enumerate(errs)]
        if progress:
            progress(len(chunk))
    return images, errors


def cache_file(files: Sequence[Path], size: int, cache_path: Path, hue_range=None) -> Path:
    """Where ``cached_images`` keeps these files decoded at ``size``: keyed by the file list, size and hue."""
    import hashlib

    key = hashlib.sha256(("\n".join(map(str, files)) + f"|{size}|{hue_range}").encode()).hexdigest()[:16]
    return Path(cache_path).with_name(f"{Path(cache_path).stem}-{key}.npy")


class UndecodableImagesError(ValueError):
    """Training images that do not decode: named, so the lab can remove or replace them (a model is not
    trained on a silently smaller set than the split it records)."""

    def __init__(self, errors: list[str]):
        shown = "; ".join(errors[:5]) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        super().__init__(f"{len(errors)} training image(s) could not be decoded: {shown}. Remove or replace "
                         "them and run the same command again")
        self.errors = errors


def cached_images(files: Sequence[Path], size: int, cache_path: Path | None, **kwargs) -> np.ndarray:
    """Decode ``files`` or load them from ``cache_path`` (keyed by the file list and size)."""
    if cache_path is not None:
        target = cache_file(files, size, cache_path, kwargs.get("hue_range"))
        if target.is_file():
            return np.load(target, mmap_mode="r")
    images, errors = decode_files(files, size, **kwargs)
    if bad := [e for e in errors if e]:
        raise UndecodableImagesError(bad)
    if cache_path is not None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".partial.npy")
        np.save(tmp, images)
        tmp.replace(target)
    return images
