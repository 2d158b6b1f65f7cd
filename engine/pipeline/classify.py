"""Classify every crop of one slide: read (Dask) -> decode (DALI) -> infer (backend) -> cells table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from bmengine.engine.backends.base import Backend
from bmengine.engine.pipeline.reader import CropBatch, DaskCropReader
from bmengine.engine.pipeline.stages import run_ahead
from bmengine.engine.preprocess.dali_pipeline import CropPipeline
from bmengine.engine.qc import garbled_flags


@dataclass
class SlideResult:
    probs: np.ndarray  # (n_cells, n_classes), NaN rows for crops that failed
    errors: list[str | None]
    qc_flags: list[str] = field(default_factory=list)


def classify_slide(
    store,
    reader: DaskCropReader,
    pipeline: CropPipeline,
    backend: Backend,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> SlideResult:
    n, n_classes = store.n_cells, len(backend.card.classes)
    probs = np.full((n, n_classes), np.nan, dtype=np.float32)
    errors: list[str | None] = [None] * n

    def decode(batch: CropBatch):
        decoded = pipeline.decode(batch.crops)
        if decoded.good:
            decoded = decoded._replace(pixels=backend.stage(decoded.pixels))
        return batch, decoded

    qc_flags = [""] * n
    batches = reader.iter_batches(store.path, n, batch_size)
    for batch, decoded in run_ahead(batches, decode, depth=2):
        errors[batch.start : batch.stop] = decoded.errors
        if decoded.good:
            rows = batch.start + np.asarray(decoded.good)
            probs[rows] = backend.infer(decoded.pixels)
            if decoded.qc is not None:
                for row, flag in zip(rows, garbled_flags(decoded.qc)):
                    qc_flags[row] = flag
        if on_batch:
            on_batch(batch.stop - batch.start)
    return SlideResult(probs, errors, qc_flags)


def cells_table(store, result: SlideResult, classes: list[str]) -> pd.DataFrame:
    """One row per crop, in store order; failed crops keep their row with the error."""
    failed = np.isnan(result.probs).any(axis=1)
    best = np.nan_to_num(result.probs, nan=-1.0).argmax(axis=1)
    predicted = np.asarray(classes, dtype=object)[best]
    predicted[failed] = None
    confidence = result.probs.max(axis=1, initial=-np.inf, where=~np.isnan(result.probs))
    confidence = np.where(failed, np.nan, confidence).astype(np.float32)
    table = pd.DataFrame(
        {
            "cell_index": np.arange(store.n_cells, dtype=np.int64),
            "source": store.sources(),
            "label": store.labels(),
            "predicted": predicted,
            "confidence": confidence,
        }
    )
    for i, name in enumerate(classes):
        table[f"prob_{name}"] = result.probs[:, i]
    table["error"] = pd.Series(result.errors, dtype=object)
    table["qc_flags"] = result.qc_flags
    return table
