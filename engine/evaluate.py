"""Score a model on labelled crops through the engine's own path (DALI preprocessing + backend).

Every function takes the ``Engine`` that ``bmengine run`` sets up (or a loaded backend, wrapped in
one), so what ``bmengine eval`` reports is what ``bmengine run`` does, int8 and all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from bmengine.engine.backends import Backend
from bmengine.engine.pipeline.engine import Engine
from bmengine.engine.store.limits import read_regular_file


class FileScores(NamedTuple):
    values: np.ndarray  # (N, C): probabilities (``infer``) or raw logits (``forward``); NaN rows failed
    ood_score: np.ndarray  # (N,): the model's OOD score; NaN for failed files and models without one
    errors: list[str | None]


def as_engine(model: Engine | Backend) -> Engine:
    return model if isinstance(model, Engine) else Engine.around(model)


def score_files(model: Engine | Backend, files: Sequence[Path], progress: Callable[[int], None] | None = None,
                raw: bool = False) -> FileScores:
    """Calibrated probabilities (``raw``: the logits before calibration) and OOD scores for image
    files, through the engine's own decoding; rows of files that fail to decode are NaN."""
    engine = as_engine(model)
    backend, pipeline, limits, batch_size = engine.backend, engine.pipeline, engine.spec.limits, engine.spec.batch_size
    probs = np.full((len(files), len(backend.card.classes)), np.nan, dtype=np.float32)
    ood = np.full(len(files), np.nan, dtype=np.float32)
    run = backend.forward if raw else backend.infer
    errors: list[str | None] = []
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        read = [read_regular_file(Path(f), limits) for f in chunk]  # never a FIFO, a device or a huge file
        readable = [i for i, (data, _) in enumerate(read) if data is not None]
        decoded = pipeline.decode([read[i][0] for i in readable])
        chunk_errors = [reason for _, reason in read]
        for i, error in zip(readable, decoded.errors):
            chunk_errors[i] = error
        if decoded.good:
            rows = start + np.asarray(readable)[np.asarray(decoded.good)]
            values, scores = run(decoded.pixels)
            probs[rows] = values
            if scores is not None:
                ood[rows] = scores
        errors += [None if e is None else f"{chunk[i]}: {e}" for i, e in enumerate(chunk_errors)]
        if progress:
            progress(len(chunk))
    return FileScores(probs, ood, errors)


def predict_files(model: Engine | Backend, files: Sequence[Path], progress: Callable[[int], None] | None = None
                  ) -> tuple[np.ndarray, list[str | None]]:
    """Probabilities (N, C) for image files; rows of files that fail to decode are NaN."""
    probs, _, errors = score_files(model, files, progress)
    return probs, errors


def evaluate_files(model: Engine | Backend, files: Sequence[Path], labels: np.ndarray, out_dir: Path | None = None,
                   **kwargs) -> dict:
    """Classification report over the files that decoded (the others are counted in ``n_failed``);
    with ``out_dir``, also the confusion matrix (CSV + PNG) and precision-recall curves (PNG)."""
    from bmengine.engine.metrics import classification_report

    engine = as_engine(model)
    backend = engine.backend
    probs, ood, errors = score_files(engine, files, **kwargs)
    ok = ~np.isnan(probs).any(axis=1)
    from bmengine.engine.taxonomy import get_taxonomy

    report = classification_report(np.asarray(labels)[ok], probs[ok], list(backend.card.classes),
                                   taxonomy=get_taxonomy(backend.card.taxonomy))
    report["n_failed"] = int((~ok).sum())
    if backend.card.ood and ok.any():  # share of these crops the engine would flag "unknown"
        report["ood_flagged_share"] = float(np.mean(ood[ok] > float(backend.card.ood["threshold"])))
    if out_dir is not None:
        from bmengine.engine.outputs.evaluation import write_evaluation_figures

        report["files"] = write_evaluation_figures(Path(out_dir), np.asarray(labels)[ok], probs[ok],
                                                   list(backend.card.classes))
    report["failed"] = [e for e in errors if e][:20]
    return report
