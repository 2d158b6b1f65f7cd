"""``bmengine run``: every slide store in a folder -> cells tables, differentials, report, run record.

One bad crop never stops its slide (it becomes an error row); one bad slide never stops the run
(it is recorded and the run goes on); a killed run resumes from its per-slide markers.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path


from bmengine.engine import __version__
from bmengine.engine.backends import Backend, BackendOptions, load_backend
from bmengine.engine.outputs.atomic import atomic_path, atomic_write_text
from bmengine.engine.outputs.history import run_history
from bmengine.engine.outputs.lock import OutputLock
from bmengine.engine.pipeline import resume
from bmengine.engine.pipeline.classify import cells_table, classify_slide
from bmengine.engine.pipeline.reader import DaskCropReader
from bmengine.engine.pipeline.shard import Shard
from bmengine.engine.labels import LabelMap, foreign_labels
from bmengine.engine.model.card import card_path_for
from bmengine.engine.outputs.domain import domain_warning
from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec
from bmengine.engine.store.limits import InputLimits

EXIT_OK, EXIT_SLIDE_FAILED, EXIT_CROP_ERRORS = 0, 1, 3
ERROR_EXAMPLES = 3  # unreadable crops named per slide on the console; all of them are in cells.parquet
DAMAGE_PREFIX = "store damaged"


@dataclass
class RunConfig:
    slides_dir: Path
    model: Path
    out_dir: Path
    batch_size: int = 64
    threads: int = 2
    scheduler: str | None = None  # Dask scheduler address; None = a local cluster in this process
    device_id: int = 0
    limits: InputLimits = field(default_factory=InputLimits)
    label_map: Path | None = None  # CSV source,model_class for the stores' labels (see engine/labels.py)
    shard: Shard | None = None  # only this share of the stores; archive outputs are left to `bmengine report`
    command: list[str] = field(default_factory=lambda: list(sys.argv))

    def __post_init__(self) -> None:
        for name in ("batch_size", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


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


@dataclass
class RunResult:
    statuses: list[SlideStatus]
    rows: list[dict]
    report: Path | None
    run_record: Path
    crops_per_second: float
    exit_code: int


class Progress:
    """What the run tells its caller as it goes; the CLI draws bars from it."""

    def slides_found(self, n_slides: int, n_crops: int) -> None: ...
    def slide_started(self, slide_id: str, n_crops: int) -> None: ...
    def crops_done(self, n: int) -> None: ...
    def slide_finished(self, status: SlideStatus) -> None: ...
    def warning(self, text: str) -> None: ...


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("onnxruntime", "nvidia-dali-cuda130", "zarr", "dask", "distributed", "numpy", "tensorrt-cu13",
                 "tensorrt"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _error_examples(cells, limit: int = ERROR_EXAMPLES) -> list[str]:
    failed = cells[cells["error"].notna()]
    return [f"{source}: {error}" for source, error in zip(failed["source"][:limit], failed["error"][:limit])]


def _process_slide(store, slide_dir: Path, cfg: RunConfig, reader, pipeline, backend: Backend, taxonomy,
                   progress: Progress, model_info: dict, label_map: LabelMap) -> tuple[dict, object]:
    from bmengine.engine.outputs.differential import summarize_slide
    from bmengine.engine.outputs.plots import plot_histogram

    resume.clear_slide(slide_dir)
    slide_dir.mkdir(parents=True, exist_ok=True)
    result = classify_slide(store, reader, pipeline, backend, cfg.batch_size, on_batch=progress.crops_done,
                            limits=cfg.limits)
    cells = cells_table(store, result, list(backend.card.classes), label_map)
    with atomic_path(slide_dir / "cells.parquet") as tmp:
        cells.to_parquet(tmp, index=False)
    validation = (backend.card.metrics or {}).get("validation") or {}
    row = summarize_slide(store.slide_id, cells, taxonomy, patient_id=store.patient_id,
                          confusion=validation.get("confusion_matrix"))
    ood = getattr(backend.card, "ood", None) or {}
    row["domain_warning"] = domain_warning(row["n_unknown"], row["n_crops"] - row["n_errors"],
                                           ood.get("false_flag_rate"))
    row["model_sha256"] = model_info["sha256"]
    row["bmengine_version"] = __version__
    known = store.provenance.get("known_mixture_pct")
    plot_histogram(row, taxonomy, slide_dir / "histogram.png", title=f"{store.slide_id} ({row['n_cells']} cells)",
                   truth=known if isinstance(known, dict) else None)
    return row, cells


def _id_clash(slide_id: str, path: Path, seen: dict[str, Path], warnings: list[str]) -> str | None:
    """Why this store cannot be run under its slide id (another store has it), else None.

    The first store with an id runs; a later one fails, naming both. Ids that differ only in case
    are a warning: their output folders collide on case-insensitive disks (macOS, Windows).
    """
    if slide_id in seen:
        return f"slide id {slide_id!r} is also the id of {seen[slide_id]}, which ran under it; rename one store"
    twin = next((other for other in seen if other.casefold() == slide_id.casefold()), None)
    if twin is not None:
        warnings.append(f"slide ids {twin!r} and {slide_id!r} differ only in case: their output folders collide "
                        "on a case-insensitive disk; rename one store")
    seen[slide_id] = path
    return None


def _known_mixture(store) -> dict | None:
    """A sample slide's known differential (built from a known mix), shown beside the estimate."""
    known = store.provenance.get("known_mixture_pct")
    return known if isinstance(known, dict) else None


def _stale_lock_warning(holder) -> str:
    return (f"the previous run into this folder did not finish ({holder.describe()}): its finished slides are "
            "kept, the others are redone")


def run_engine(cfg: RunConfig, progress: Progress | None = None) -> RunResult:
    """Classify every store in ``cfg.slides_dir``; see the module docstring for failure rules."""
    from bmengine.engine.outputs.differential import write_differential
    from bmengine.engine.outputs.report import write_report
    from bmengine.engine.store import SlideStore, find_slide_stores
    from bmengine.engine.taxonomy import get_taxonomy

    progress = progress or Progress()
    started, t0 = _utc_now(), time.perf_counter()
    stores = find_slide_stores(cfg.slides_dir)  # raises on a missing/empty folder, before any work
    if cfg.shard is not None:
        stores = cfg.shard.select(stores)
    backend = load_backend(cfg.model, BackendOptions(cfg.threads, cfg.device_id, cfg.batch_size))
    card = backend.card
    taxonomy = get_taxonomy(card.taxonomy)
    model_info = {"path": str(cfg.model), "name": card.name, "sha256": card.weights_sha256,
                  "precision": card.precision, "backend": backend.name, "taxonomy": card.taxonomy}
    prep = card.preprocessing
    pipeline = CropPipeline(PipelineSpec.from_preprocessing(prep, device=backend.device,
                                         batch_size=cfg.batch_size, num_threads=cfg.threads, device_id=cfg.device_id,
                                         qc_output=True), limits=cfg.limits)
    card_sha256 = resume.card_digest(card_path_for(Path(cfg.model)))
    label_map = LabelMap.load(cfg.label_map, card.classes) if cfg.label_map is not None else LabelMap()
    with OutputLock(cfg.out_dir, cfg.shard.name if cfg.shard else None) as lock:  # creates OUT; a second run into it is refused here
        if lock.stale is not None:
            progress.warning(_stale_lock_warning(lock.stale))

        opened: list[tuple[Path, object | None, str | None]] = []
        for path in stores:
            try:
                opened.append((path, SlideStore.open(path), None))
            except Exception as exc:  # a malformed store is that slide's failure, not the run's
                opened.append((path, None, f"{type(exc).__name__}: {exc}"))
        progress.slides_found(len(opened), sum(s.n_cells for _, s, _ in opened if s is not None))

        statuses: list[SlideStatus] = []
        rows: list[dict] = []
        warnings: list[str] = [_stale_lock_warning(lock.stale)] if lock.stale is not None else []
        seen: dict[str, Path] = {}
        crops_classified, classify_seconds = 0, 0.0
        with DaskCropReader(cfg.scheduler, threads=cfg.threads) as reader:
            for path, store, open_error in opened:
                slide_id = store.slide_id if store is not None else path.name.removesuffix(".zarr")
                status = SlideStatus(slide_id, str(path), "failed", error=open_error)
                if store is not None:
                    n_warnings = len(warnings)
                    status.error = _id_clash(slide_id, path, seen, warnings)
                    for text in warnings[n_warnings:]:
                        progress.warning(text)
                if status.error is not None:
                    statuses.append(status)
                    progress.slide_finished(status)
                    continue
                slide_dir = cfg.out_dir / slide_id
                status.n_crops = store.n_cells
                if foreign := foreign_labels(store.label_names, card.classes, label_map):
                    warnings.append(f"{slide_id}: labels {', '.join(foreign)} are not classes of model {card.name!r}; "
                                    "those crops are not scored against their labels (map them with --label-map)")
                    progress.warning(warnings[-1])
                key = resume.resume_key(store.content_hash(), card.weights_sha256, card_sha256, cfg.limits,
                                        label_map.mapping)
                done, status.redo_reason = resume.finished_record(slide_dir, key)
                if done is not None:
                    status.status, status.n_errors, status.seconds = "skipped", done["n_errors"], done["seconds"]
                    status.error_examples = list(done.get("error_examples") or [])
                    status.domain_warning = done["row"].get("domain_warning", "")
                    rows.append(done["row"])
                    statuses.append(status)
                    progress.crops_done(store.n_cells)
                    progress.slide_finished(status)
                    continue
                progress.slide_started(slide_id, store.n_cells)
                t_slide = time.perf_counter()
                try:
                    row, cells = _process_slide(store, slide_dir, cfg, reader, pipeline, backend, taxonomy,
                                                progress, model_info, label_map)
                except Exception as exc:
                    status.error = f"{type(exc).__name__}: {exc}"
                    status.seconds = time.perf_counter() - t_slide
                    resume.write_record(slide_dir, {**asdict(status), "traceback": traceback.format_exc()}, key)
                else:
                    errors = cells["error"].dropna().astype(str)
                    status.status, status.n_errors = "ok", int(len(errors))
                    status.error_examples = _error_examples(cells)
                    status.domain_warning = row["domain_warning"]
                    status.seconds = time.perf_counter() - t_slide
                    crops_classified += store.n_cells
                    classify_seconds += status.seconds
                    rows.append(row)
                    resume.write_record(slide_dir, {**asdict(status), "model_sha256": card.weights_sha256,
                                                    "bmengine_version": __version__, "row": row,
                                                    "n_damaged": int(errors.str.startswith(DAMAGE_PREFIX).sum()),
                                                    "known_mixture_pct": _known_mixture(store)}, key)
                statuses.append(status)
                progress.slide_finished(status)
        backend.close()

        metadata = {"model_sha256": card.weights_sha256, "bmengine_version": __version__}
        report = None
        if rows and cfg.shard is None:  # a shard's slides are merged later by `bmengine report`
            write_differential(rows, cfg.out_dir, metadata=metadata)
        rate = crops_classified / classify_seconds if classify_seconds else 0.0
        record = cfg.out_dir / (f"run.{cfg.shard.name}.json" if cfg.shard else "run.json")
        run_info = {
            "bmengine_version": __version__,
            "command": cfg.command,
            "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items() if k != "command"},
            "shard": asdict(cfg.shard) if cfg.shard else None,
            "model": model_info,
            "taxonomy": taxonomy.name,
            "started_at": started,
            "finished_at": _utc_now(),
            "wall_seconds": round(time.perf_counter() - t0, 3),
            "crops_classified": crops_classified,
            # null when this run classified nothing (all resumed): the earlier runs' rates are in history
            "crops_per_second": round(rate, 1) if crops_classified else None,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "processor": platform.processor() or platform.machine(), "versions": _versions()},
            "warnings": warnings,
            "slides": [asdict(s) for s in statuses],
            "history": run_history(record),
        }
        truth = {store.slide_id: _known_mixture(store) for _, store, _ in opened
                 if store is not None and _known_mixture(store) is not None}
        if cfg.shard is None:
            report = write_report(cfg.out_dir, run_info, rows, [asdict(s) for s in statuses], taxonomy,
                                  truth=truth or None)
        failed = any(s.status == "failed" for s in statuses)
        crop_errors = any(s.n_errors for s in statuses)
        exit_code = EXIT_SLIDE_FAILED if failed else EXIT_CROP_ERRORS if crop_errors else EXIT_OK
        run_info["exit_code"] = exit_code
        atomic_write_text(record, json.dumps(run_info, indent=2, default=str) + "\n")
        return RunResult(statuses, rows, report, record, rate, exit_code)
