"""Classify every crop of one slide: read -> decode (DALI) -> infer (backend) -> cells table."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from bmengine.engine.backends.base import Backend
from bmengine.engine.labels import LabelMap
from bmengine.engine.pipeline.reader import CropBatch, CropReader
from bmengine.engine.pipeline.stages import DECODE_AHEAD, run_ahead
from bmengine.engine.preprocess.dali_pipeline import CropPipeline
from bmengine.engine.qc import quality_flags
from bmengine.engine.store.limits import InputLimits
from bmengine.engine.store.slide_store import StoreDamagedError


@dataclass
class SlideResult:
    probs: np.ndarray  # (n_cells, n_classes), NaN rows for crops that failed
    errors: list[str | None]
    qc_flags: list[str] = field(default_factory=list)
    ood_score: np.ndarray | None = None  # (n_cells,), NaN where failed or the model has no OOD output


#: the qc flag of a crop whose OOD score is above the card's threshold (a cell type the model never saw)
UNKNOWN_FLAG = "unknown"


def add_flag(flags: str, flag: str) -> str:
    """``flags`` (";"-joined) with ``flag`` added."""
    return f"{flags};{flag}" if flags else flag


class _WholeStoreDigest:
    """Stores written before per-crop checksums carry one sha256 over all crop bytes: hash the crops
    as they stream past, in order, and refuse the slide at its end if the store changed on disk."""

    def __init__(self, store):
        self.store, self.expected = store, store.attrs.get("crops_sha256")
        self.digest, self.next_cell = hashlib.sha256(), 0

    def update(self, batch: CropBatch) -> None:
        if self.expected is None:
            return
        if batch.start != self.next_cell:
            raise RuntimeError(f"batches out of order: expected cell {self.next_cell}, got {batch.start}")
        for crop in batch.crops:
            if crop is None:  # not read (above the size cap): the digest cannot be checked for this store
                self.expected = None
                return
            self.digest.update(crop)
        self.next_cell = batch.stop

    def check(self) -> None:
        if self.expected is not None and self.digest.hexdigest() != self.expected:
            raise StoreDamagedError(f"{self.store.path}: store damaged: crop bytes differ from the crops_sha256 "
                                    "written at ingest; re-ingest this slide")


@dataclass
class DecodedBatch:
    """The decode stage's product for one batch: which crops were readable (positions in the batch),
    the decoder's output for them (pixels staged for the backend), and each good crop's QC flags.
    QC runs here, beside decoding, so the inference thread does nothing but infer."""

    readable: list[int]
    decoded: object  # preprocess.dali_pipeline.Decoded
    qc_flags: list[str] | None  # per good crop; None when the pipeline gives no QC image


def decode_batch(batch: CropBatch, pipeline: CropPipeline, backend: Backend) -> DecodedBatch:
    """Decode stage: a batch's readable crops, decoded, quality-checked and staged for the backend."""
    readable = [i for i, crop in enumerate(batch.crops) if crop is not None]
    decoded = pipeline.decode([batch.crops[i] for i in readable])
    flags = quality_flags(decoded.qc, decoded.shapes) if decoded.good and decoded.qc is not None else None
    if decoded.good:
        decoded = decoded._replace(pixels=backend.stage(decoded.pixels), qc=None)  # the QC images are done with
    return DecodedBatch(readable, decoded, flags)


class SlideAccumulator:
    """One slide's results, filled batch by batch as inference returns them (batches in order)."""

    def __init__(self, store, backend: Backend):
        n, n_classes = store.n_cells, len(backend.card.classes)
        self.backend = backend
        self.probs = np.full((n, n_classes), np.nan, dtype=np.float32)
        self.errors: list[str | None] = [None] * n
        self.qc_flags = [""] * n
        self.ood_score = np.full(n, np.nan, dtype=np.float32)
        self.threshold = float(backend.card.ood["threshold"]) if backend.card.ood else None
        self.whole_store = None if store.has_crop_checksums else _WholeStoreDigest(store)

    def add(self, batch: CropBatch, ready: DecodedBatch) -> None:
        """Infer one decoded batch and keep its rows."""
        if self.whole_store is not None:
            self.whole_store.update(batch)
        decoded = ready.decoded
        self.errors[batch.start : batch.stop] = batch.errors
        for i, error in zip(ready.readable, decoded.errors):
            self.errors[batch.start + i] = error
        if not decoded.good:
            return
        rows = batch.start + np.asarray(ready.readable)[np.asarray(decoded.good)]
        inference = self.backend.infer(decoded.pixels)
        self.probs[rows] = inference.probs
        if ready.qc_flags is not None:
            for row, flag in zip(rows, ready.qc_flags):
                self.qc_flags[row] = flag
        if inference.ood_score is not None:
            self.ood_score[rows] = inference.ood_score
            if self.threshold is not None:
                for row in rows[inference.ood_score > self.threshold]:
                    self.qc_flags[row] = add_flag(self.qc_flags[row], UNKNOWN_FLAG)

    def finish(self) -> SlideResult:
        if self.whole_store is not None:
            self.whole_store.check()
        return SlideResult(self.probs, self.errors, self.qc_flags, self.ood_score)


def classify_slide(
    store,
    reader: CropReader,
    pipeline: CropPipeline,
    backend: Backend,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
    limits: InputLimits | None = None,
) -> SlideResult:
    """Every crop of one ``store`` -> probabilities, or an error naming why that crop has none.
    (A run streams many slides through the same stages: engine/pipeline/stream.py.)"""
    slide = SlideAccumulator(store, backend)
    batches = reader.iter_batches(store, batch_size, limits=limits)
    for batch, ready in run_ahead(batches, lambda b: (b, decode_batch(b, pipeline, backend)), depth=DECODE_AHEAD):
        slide.add(batch, ready)
        if on_batch:
            on_batch(batch.stop - batch.start)
    return slide.finish()


def cells_table(store, result: SlideResult, classes: list[str], label_map: LabelMap | None = None) -> pd.DataFrame:
    """One row per crop, in store order; failed crops keep their row with the error.

    ``label`` is the store's label in the model's class names (through ``label_map``); a label the
    map leaves out becomes empty (not scored).
    """
    label_map = label_map or LabelMap()
    labels = [None if label is None or label_map.ignored(label) else label_map(label) for label in store.labels()]
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
            "label": labels,
            "predicted": predicted,
            "confidence": confidence,
        }
    )
    for i, name in enumerate(classes):
        table[f"prob_{name}"] = result.probs[:, i]
    table["error"] = pd.Series(result.errors, dtype=object)
    table["qc_flags"] = result.qc_flags
    table["ood_score"] = (result.ood_score if result.ood_score is not None
                          else np.full(store.n_cells, np.nan)).astype(np.float32)
    return table
