"""One slide, start to finish: classify its crops, then write its outputs, marker last.

The steps, each usable alone: ``begin_slide`` (its old marker goes first), ``process_slide``
(classify + ``summarize``: computes and writes nothing), ``record_slide`` (cells, histogram, then
the marker; never raises: a slide that fails becomes a failed status and a failed marker).
``run_slide`` chains them for one slide; the slide stream (engine/pipeline/stream.py) runs the
same steps for many slides at once, each in its own stage.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from bmengine.engine import __version__
from bmengine.engine.outputs.atomic import atomic_path
from bmengine.engine.outputs.domain import domain_warning
from bmengine.engine.pipeline import resume
from bmengine.engine.pipeline.classify import cells_table, classify_slide

DAMAGE_PREFIX = "store damaged"
ERROR_EXAMPLES = 3  # unreadable crops named per slide on the console; all of them are in cells.parquet


@dataclass
class SlideStatus:
    slide_id: str
    store: str
    status: str  # ok | skipped (already done) | failed
    n_crops: int = 0
    n_errors: int = 0
    seconds: float = 0.0
    error: str | None = None
    error_examples: list[str] = field(default_factory=list)  # the first few unreadable crops: "source: why"
    redo_reason: str | None = None  # why a slide with a marker from an earlier run was redone
    domain_warning: str = ""  # the model may not apply to this slide (engine/outputs/domain.py)
    worker: str = ""  # the process that classified it: "local", or a Dask worker's name


@dataclass(frozen=True)
class SlideJob:
    """What a runner needs to classify one slide; picklable, so a Dask worker can take it."""

    store: Path
    slide_id: str
    slide_dir: Path
    key: resume.ResumeKey
    n_cells: int
    redo_reason: str | None = None


@dataclass
class SlideOutput:
    row: dict
    cells: object  # pandas.DataFrame, one row per crop
    known_mixture_pct: dict | None


def known_mixture(store) -> dict | None:
    """A sample slide's known differential (built from a known mix), shown beside the estimate."""
    known = store.provenance.get("known_mixture_pct")
    return known if isinstance(known, dict) else None


def _error_examples(cells, limit: int = ERROR_EXAMPLES) -> list[str]:
    failed = cells[cells["error"].notna()]
    return [f"{source}: {error}" for source, error in zip(failed["source"][:limit], failed["error"][:limit])]


def summarize(store, result, engine) -> SlideOutput:
    """Post-process a classified slide: its cells table and differential row."""
    from bmengine.engine.outputs.differential import summarize_slide
    from bmengine.engine.taxonomy import get_taxonomy

    card = engine.card
    cells = cells_table(store, result, list(card.classes), engine.label_map)
    validation = (card.metrics or {}).get("validation") or {}
    row = summarize_slide(store.slide_id, cells, get_taxonomy(card.taxonomy), patient_id=store.patient_id,
                          confusion=validation.get("confusion_matrix"))
    ood = getattr(card, "ood", None) or {}
    row["domain_warning"] = domain_warning(row["n_unknown"], row["n_crops"] - row["n_errors"], ood.get("false_flag_rate"))
    row["model_sha256"] = card.weights_sha256
    row["bmengine_version"] = __version__
    return SlideOutput(row, cells, known_mixture(store))


def process_slide(store, engine, reader, on_batch: Callable[[int], None] | None = None) -> SlideOutput:
    """Classify every crop of ``store``: the cells table and the differential row. Writes nothing."""
    result = classify_slide(store, reader, engine.pipeline, engine.backend, engine.spec.batch_size,
                            on_batch=on_batch, limits=engine.spec.limits)
    return summarize(store, result, engine)


def write_slide(output: SlideOutput, slide_dir: Path, taxonomy) -> None:
    """The slide's cells table and histogram (the marker is written by ``record_slide``, last)."""
    from bmengine.engine.outputs.plots import HISTOGRAM_NAME, plot_histogram
    from bmengine.engine.outputs.report import histogram_title

    with atomic_path(slide_dir / "cells.parquet") as tmp:
        output.cells.to_parquet(tmp, index=False)
    row = output.row
    plot_histogram(row, taxonomy, slide_dir / HISTOGRAM_NAME, title=histogram_title(row["slide_id"], row),
                   truth=output.known_mixture_pct)  # drawn once: the report inlines these bytes


def begin_slide(job: SlideJob) -> None:
    """Remove the slide's old marker first: a crash from here on never looks finished."""
    resume.clear_slide(job.slide_dir)
    job.slide_dir.mkdir(parents=True, exist_ok=True)


def failed_slide(job: SlideJob, error: BaseException, worker: str, seconds: float,
                 trace: str | None = None) -> tuple[SlideStatus, None]:
    """A failed status, recorded in the slide's (failed) marker."""
    status = SlideStatus(job.slide_id, str(job.store), "failed", n_crops=job.n_cells, redo_reason=job.redo_reason,
                         worker=worker, error=f"{type(error).__name__}: {error}", seconds=seconds)
    trace = trace or "".join(traceback.format_exception(type(error), error, error.__traceback__))
    try:
        resume.write_record(job.slide_dir, {**asdict(status), "traceback": trace}, job.key)
    except Exception as exc:  # the status still reaches run.json; with no marker the slide is redone on resume
        status.error += f" (its failed marker could not be written either: {type(exc).__name__}: {exc})"
    return status, None


def record_slide(job: SlideJob, output: SlideOutput, engine, worker: str, t0: float) -> tuple[SlideStatus, dict | None]:
    """Write a classified slide's cells and histogram, then its marker; never raises."""
    from bmengine.engine.taxonomy import get_taxonomy

    try:
        write_slide(output, job.slide_dir, get_taxonomy(engine.card.taxonomy))
    except Exception as exc:
        return failed_slide(job, exc, worker, time.perf_counter() - t0)
    errors = output.cells["error"].dropna().astype(str)
    status = SlideStatus(job.slide_id, str(job.store), "ok", n_crops=job.n_cells, n_errors=int(len(errors)),
                         redo_reason=job.redo_reason, worker=worker, error_examples=_error_examples(output.cells),
                         domain_warning=output.row["domain_warning"])
    status.seconds = time.perf_counter() - t0
    resume.write_record(job.slide_dir, {**asdict(status), "model_sha256": engine.card.weights_sha256,
                                        "bmengine_version": __version__, "row": output.row,
                                        "n_damaged": int(errors.str.startswith(DAMAGE_PREFIX).sum()),
                                        "known_mixture_pct": output.known_mixture_pct}, job.key)
    return status, output.row


def run_slide(job: SlideJob, engine, reader, worker: str = "local", on_batch: Callable[[int], None] | None = None,
              store=None) -> tuple[SlideStatus, dict | None]:
    """Classify and write one slide; (its status, its differential row or None if it failed).
    ``store``: the job's store when the caller has it open already (else it is opened here)."""
    from bmengine.engine.store import SlideStore

    t0 = time.perf_counter()
    begin_slide(job)
    try:
        store = store if store is not None else SlideStore.open(job.store)
        output = process_slide(store, engine, reader, on_batch)
    except Exception as exc:
        return failed_slide(job, exc, worker, time.perf_counter() - t0)
    return record_slide(job, output, engine, worker, t0)
