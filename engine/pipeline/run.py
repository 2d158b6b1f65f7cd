"""``bmengine run``: every slide store in a folder -> cells tables, differentials, report, run record.

The skeleton: **plan** (find the stores, open them, refuse duplicate ids, skip what resume says is
done) -> a **runner** classifies the planned slides (engine/pipeline/runners.py: in this process,
or on the workers of a Dask cluster; each slide: read -> decode -> infer -> post-process -> write,
engine/pipeline/slide_job.py) -> the archive's **outputs** (differential, report, run.json).

One bad crop never stops its slide (it becomes an error row); one bad slide never stops the run
(it is recorded and the run goes on); a killed run resumes from its per-slide markers.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from bmengine.engine import __version__
from bmengine.engine.labels import foreign_labels
from bmengine.engine.outputs.atomic import atomic_write_text
from bmengine.engine.outputs.history import run_history
from bmengine.engine.outputs.lock import OutputLock
from bmengine.engine.pipeline import resume
from bmengine.engine.pipeline.engine import Engine, EngineSpec, ModelRef
from bmengine.engine.pipeline.shard import Shard
from bmengine.engine.pipeline.slide_job import (  # noqa: F401  (SlideStatus is part of this module's API)
    DAMAGE_PREFIX,
    ERROR_EXAMPLES,
    SlideJob,
    SlideStatus,
    known_mixture,
)
from bmengine.engine.store.limits import InputLimits

EXIT_OK, EXIT_SLIDE_FAILED, EXIT_CROP_ERRORS = 0, 1, 3


@dataclass
class RunConfig:
    slides_dir: Path
    model: Path
    out_dir: Path
    batch_size: int = 64
    threads: int = 2
    scheduler: str | None = None  # a Dask scheduler's address: slides go to its workers
    workers: int = 0  # > 0: that many local worker processes (a Dask cluster started for this run)
    gpus: tuple[int, ...] = ()  # one worker process per listed GPU
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
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be a whole number >= 0, got {self.workers!r}")
        if sum(bool(x) for x in (self.scheduler, self.workers, self.gpus)) > 1:
            raise ValueError("choose one of --scheduler, --workers and --gpus")

    @property
    def engine_spec(self) -> EngineSpec:
        return EngineSpec(Path(self.model), self.batch_size, self.threads, 0 if self.gpus else self.device_id,
                          self.limits, self.label_map)

    @property
    def distributed(self) -> bool:
        return bool(self.scheduler or self.workers or self.gpus)


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


def _stale_lock_warning(holder) -> str:
    return (f"the previous run into this folder did not finish ({holder.describe()}): its finished slides are "
            "kept, the others are redone")


@dataclass
class Plan:
    """Every store of the run, in order: its final status (failed to open, duplicate id, already
    done) or the job a runner must do."""

    entries: list[tuple[str, SlideStatus | SlideJob]] = field(default_factory=list)  # (store path, ...)
    rows: dict[str, dict] = field(default_factory=dict)  # store path -> row of a slide resumed as done
    stores: dict[Path, object] = field(default_factory=dict)  # open stores of the jobs (for a local runner)
    truth: dict[str, dict] = field(default_factory=dict)  # slide id -> known mixture (sample slides)
    n_crops: int = 0

    @property
    def jobs(self) -> list[SlideJob]:
        return [entry for _, entry in self.entries if isinstance(entry, SlideJob)]


def open_stores(paths: list[Path]) -> list[tuple[Path, object]]:
    """Each store opened and validated, or the exception that says why it cannot be (a malformed
    store is that slide's failure, not the run's). Reads no output: runs before OUT is locked."""
    from bmengine.engine.store import SlideStore

    opened: list[tuple[Path, object]] = []
    for path in paths:
        try:
            opened.append((path, SlideStore.open(path)))
        except Exception as exc:
            opened.append((path, exc))
    return opened


def plan_run(cfg: RunConfig, engine: Engine | ModelRef, stores: list[tuple[Path, object]], warnings: list[str],
             progress: Progress) -> Plan:
    """Refuse duplicate ids, and let resume decide what is already done (``stores``: from ``open_stores``)."""
    card, plan, seen = engine.card, Plan(), {}
    for path, store in stores:
        if isinstance(store, Exception):
            plan.entries.append((str(path), SlideStatus(path.name.removesuffix(".zarr"), str(path), "failed",
                                                        error=f"{type(store).__name__}: {store}")))
            continue
        plan.n_crops += store.n_cells
        n_warnings = len(warnings)
        clash = _id_clash(store.slide_id, path, seen, warnings)
        for text in warnings[n_warnings:]:
            progress.warning(text)
        if clash is not None:
            plan.entries.append((str(path), SlideStatus(store.slide_id, str(path), "failed", error=clash)))
            continue
        if (known := known_mixture(store)) is not None:
            plan.truth[store.slide_id] = known
        if foreign := foreign_labels(store.label_names, card.classes, engine.label_map):
            warnings.append(f"{store.slide_id}: labels {', '.join(foreign)} are not classes of model {card.name!r}; "
                            "those crops are not scored against their labels (map them with --label-map)")
            progress.warning(warnings[-1])
        slide_dir = cfg.out_dir / store.slide_id
        key = resume.resume_key(store.content_hash(), card.weights_sha256, engine.card_sha256, cfg.limits,
                                engine.label_map.mapping)
        done, redo_reason = resume.finished_record(slide_dir, key)
        if done is not None:
            status = SlideStatus(store.slide_id, str(path), "skipped", n_crops=store.n_cells, n_errors=done["n_errors"],
                                 seconds=done["seconds"], error_examples=list(done.get("error_examples") or []),
                                 domain_warning=done["row"].get("domain_warning", ""), worker=done.get("worker", ""))
            plan.entries.append((str(path), status))
            plan.rows[str(path)] = done["row"]
            continue
        plan.entries.append((str(path), SlideJob(path, store.slide_id, slide_dir, key, store.n_cells, redo_reason)))
        plan.stores[path] = store
    return plan


def _ready_engine(spec: EngineSpec) -> Engine:
    """The engine with its decoding pipeline built: the first batch does not wait for it."""
    engine = Engine.load(spec)
    engine.pipeline.build()
    return engine


def make_runner(cfg: RunConfig, engine: Engine, plan: Plan):
    if cfg.distributed:
        from bmengine.engine.pipeline.dask_runner import ClusterRequest, DaskRunner

        return DaskRunner(cfg.engine_spec, ClusterRequest(cfg.scheduler, cfg.workers, tuple(cfg.gpus), cfg.threads))
    from bmengine.engine.pipeline.runners import LocalRunner

    return LocalRunner(engine, stores=plan.stores)


def run_engine(cfg: RunConfig, progress: Progress | None = None) -> RunResult:
    """Classify every store in ``cfg.slides_dir``; see the module docstring for failure rules."""
    from bmengine.engine.store import find_slide_stores

    progress = progress or Progress()
    started, t0 = _utc_now(), time.perf_counter()
    stores = find_slide_stores(cfg.slides_dir)  # raises on a missing/empty folder, before any work
    if cfg.shard is not None:
        stores = cfg.shard.select(stores)
    # the local runner's engine, set up (backend, DALI pipeline built) while the stores are opened;
    # a Dask client plans from the card alone (its workers load the model)
    with ThreadPoolExecutor(1, thread_name_prefix="bmengine-load") as pool:
        loading = None if cfg.distributed else pool.submit(_ready_engine, cfg.engine_spec)
        opened = open_stores(stores)
        # a model that cannot be loaded fails here, before OUT exists
        engine = ModelRef.load(cfg.engine_spec) if loading is None else loading.result()
    with OutputLock(cfg.out_dir, cfg.shard.name if cfg.shard else None) as lock:  # creates OUT; refuses a 2nd run
        warnings: list[str] = []
        if lock.stale is not None:
            warnings.append(_stale_lock_warning(lock.stale))
            progress.warning(warnings[-1])
        plan = plan_run(cfg, engine, opened, warnings, progress)
        progress.slides_found(len(plan.entries), plan.n_crops)
        finished: dict[str, tuple[SlideStatus, dict | None]] = {}
        for store, entry in plan.entries:
            if isinstance(entry, SlideStatus):
                finished[store] = (entry, plan.rows.get(store))
                if entry.status == "skipped":
                    progress.crops_done(entry.n_crops)
                progress.slide_finished(entry)

        def on_done(status: SlideStatus, row: dict | None) -> None:
            finished[status.store] = (status, row)
            progress.slide_finished(status)

        jobs = plan.jobs
        t_classify = time.perf_counter()
        if jobs:
            runner = make_runner(cfg, engine, plan)
            try:
                runner.run(jobs, lambda job: progress.slide_started(job.slide_id, job.n_cells), on_done,
                           progress.crops_done)
            finally:
                runner.close()
        classify_seconds = time.perf_counter() - t_classify
        engine.close()

        statuses = [finished[store][0] for store, _ in plan.entries]
        rows = [finished[store][1] for store, _ in plan.entries if finished[store][1] is not None]
        crops_classified = sum(s.n_crops for s in statuses if s.status == "ok")
        return _write_run_outputs(cfg, engine, statuses, rows, plan.truth, warnings, started, t0,
                                  crops_classified, classify_seconds)


def _write_run_outputs(cfg: RunConfig, engine: Engine | ModelRef, statuses: list[SlideStatus], rows: list[dict],
                       truth: dict, warnings: list[str], started: str, t0: float, crops_classified: int,
                       classify_seconds: float) -> RunResult:
    from bmengine.engine.outputs.differential import write_differential
    from bmengine.engine.outputs.report import write_report
    from bmengine.engine.taxonomy import get_taxonomy

    card, taxonomy = engine.card, get_taxonomy(engine.card.taxonomy)
    metadata = {"model_sha256": card.weights_sha256, "bmengine_version": __version__}
    report = None
    if rows and cfg.shard is None:  # a shard's slides are merged later by `bmengine report`
        write_differential(rows, cfg.out_dir, metadata=metadata)
    rate = crops_classified / classify_seconds if crops_classified and classify_seconds else 0.0
    record = cfg.out_dir / (f"run.{cfg.shard.name}.json" if cfg.shard else "run.json")
    run_info = {
        "bmengine_version": __version__,
        "command": cfg.command,
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items() if k != "command"},
        "shard": asdict(cfg.shard) if cfg.shard else None,
        "runner": "dask" if cfg.distributed else "local",
        "model": engine.model_info,
        "taxonomy": taxonomy.name,
        "started_at": started,
        "finished_at": _utc_now(),
        "wall_seconds": round(time.perf_counter() - t0, 3),
        "crops_classified": crops_classified,
        # crops per second of the classifying phase (all workers together); null when this run
        # classified nothing (all resumed): the earlier runs' rates are in history
        "crops_per_second": round(rate, 1) if crops_classified else None,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "processor": platform.processor() or platform.machine(), "versions": _versions()},
        "warnings": warnings,
        "slides": [asdict(s) for s in statuses],
        "history": run_history(record),
    }
    if cfg.shard is None:
        report = write_report(cfg.out_dir, run_info, rows, [asdict(s) for s in statuses], taxonomy,
                              truth=truth or None)
    failed = any(s.status == "failed" for s in statuses)
    crop_errors = any(s.n_errors for s in statuses)
    exit_code = EXIT_SLIDE_FAILED if failed else EXIT_CROP_ERRORS if crop_errors else EXIT_OK
    run_info["exit_code"] = exit_code
    atomic_write_text(record, json.dumps(run_info, indent=2, default=str) + "\n")
    return RunResult(statuses, rows, report, record, rate, exit_code)
