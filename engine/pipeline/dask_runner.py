"""The Dask runner: slides on the workers of a Dask cluster (engine/pipeline/runners.py says how
it divides the work). Kept apart so a local run never imports ``distributed``."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from distributed.diagnostics.plugin import WorkerPlugin

from bmengine.engine.pipeline.engine import Engine, EngineSpec
from bmengine.engine.pipeline.slide_job import SlideJob, SlideStatus

PLUGIN_NAME = "bmengine-engine"
#: task threads per Dask worker: slides a worker's stream holds at once (one classifying, one queued)
SLIDES_PER_WORKER = 2


class EnginePlugin(WorkerPlugin):
    """Builds the worker's Engine and slide stream once, when the worker starts or joins."""

    name = PLUGIN_NAME

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.engine: Engine | None = None
        self.reader = None
        self.stream = None

    def setup(self, worker) -> None:
        from bmengine.engine.pipeline.reader import LocalCropReader
        from bmengine.engine.pipeline.stream import SlideStream

        self.engine = Engine.load(self.spec)
        self.reader = LocalCropReader()
        self.stream = SlideStream(self.engine, self.reader, worker=str(worker.name))

    def teardown(self, worker) -> None:
        if self.stream is not None:
            self.stream.close()
        if self.engine is not None:
            self.engine.close()


def classify_on_worker(job: SlideJob) -> tuple[SlideStatus, dict | None]:
    """The Dask task: one whole slide through the stream of whichever worker the scheduler picked."""
    from distributed import get_worker

    return get_worker().plugins[PLUGIN_NAME].stream.submit(job).result()


@dataclass
class ClusterRequest:
    """Which cluster a DaskRunner uses: an address, N local CPU workers, or one worker per GPU."""

    scheduler: str | None = None
    workers: int = 0
    gpus: tuple[int, ...] = ()
    threads: int = 2


def start_cluster(request: ClusterRequest):
    """(client, cluster or None): a client of an existing scheduler, or of local worker processes."""
    from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster

    if request.scheduler:
        return Client(request.scheduler, timeout="30s"), None
    if request.gpus:  # one worker process per GPU, pinned by CUDA_VISIBLE_DEVICES (it sees device 0)
        workers = {f"gpu-{gpu}": {"cls": Nanny, "options": {"nthreads": SLIDES_PER_WORKER, "env": {"CUDA_VISIBLE_DEVICES": str(gpu)}}}
                   for gpu in request.gpus}
        cluster = SpecCluster(workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": None}})
    else:
        cluster = LocalCluster(n_workers=request.workers, threads_per_worker=SLIDES_PER_WORKER, processes=True,
                               dashboard_address=None)
    return Client(cluster), cluster


class DaskRunner:
    name = "dask"

    def __init__(self, spec: EngineSpec, request: ClusterRequest):
        self.client, self.cluster = start_cluster(request)
        self.client.register_plugin(EnginePlugin(spec), name=PLUGIN_NAME)

    def run(self, jobs, on_started, on_done, on_crops) -> None:
        from distributed import as_completed

        futures = {}
        for job in jobs:
            key = f"bmengine-slide-{job.slide_id}-{uuid.uuid4().hex[:8]}"
            futures[self.client.submit(classify_on_worker, job, key=key, pure=False)] = job
            on_started(job)
        for future in as_completed(futures):
            job = futures[future]
            try:
                status, row = future.result()
            except Exception as exc:  # the task itself failed: a worker died more often than Dask allows
                status, row = SlideStatus(job.slide_id, str(job.store), "failed", n_crops=job.n_cells,
                                          error=f"{type(exc).__name__}: {exc}", worker="?"), None
            if status.status == "ok":
                on_crops(job.n_cells)
            on_done(status, row)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
