"""Runners: who classifies the planned slides. One interface, two implementations.

- ``LocalRunner`` (the default, and the demo's): this process; every slide goes through one slide
  stream (engine/pipeline/stream.py) that never drains between slides; crops are read one batch
  ahead in a thread (engine/pipeline/reader.py). No Dask: on one machine a cluster only adds its
  start-up and a scheduler hop per batch.
- ``DaskRunner`` (engine/pipeline/dask_runner.py, imported only when asked for): the workers of
  a Dask cluster, each holding one ``Engine`` and its slide stream (a worker plugin builds them
  once). Whole slides go to workers as paths, never as bytes; each task
  submits its slide to its worker's stream, which reads, decodes, infers and writes the slide's
  outputs into the shared OUT (atomically, marker last); the task returns only the status and the
  differential row. Each worker runs ``SLIDES_PER_WORKER`` tasks at once, so its stream always
  holds the next slide while it classifies the current one. ``--workers N`` starts N local worker processes,
  ``--gpus 0,1`` one per GPU (each sees only its own), ``--scheduler ADDRESS`` uses an existing
  cluster whose workers see the same files. A worker that dies mid-slide: the scheduler gives the
  slide to another worker, which redoes it from scratch (its marker was removed first), so no cell
  is lost or counted twice.
"""

from __future__ import annotations

from typing import Callable, Protocol

from bmengine.engine.pipeline.engine import Engine
from bmengine.engine.pipeline.slide_job import SlideJob, SlideStatus

OnDone = Callable[[SlideStatus, "dict | None"], None]


class Runner(Protocol):
    name: str

    def run(self, jobs: list[SlideJob], on_started: Callable[[SlideJob], None], on_done: OnDone,
            on_crops: Callable[[int], None]) -> None: ...

    def close(self) -> None: ...


class LocalRunner:
    name = "local"

    def __init__(self, engine: Engine, stores: dict | None = None):
        from bmengine.engine.pipeline.reader import LocalCropReader

        self.engine = engine
        self.reader = LocalCropReader()
        self.stores = stores or {}  # store path -> the store the planner opened already

    def run(self, jobs, on_started, on_done, on_crops) -> None:
        from bmengine.engine.pipeline.stream import SlideStream

        stream = SlideStream(self.engine, self.reader, "local", on_started=on_started, on_crops=on_crops)
        try:
            futures = [stream.submit(job, self.stores.get(job.store)) for job in jobs]
            for future in futures:  # a single stream finishes slides in the order they went in
                on_done(*future.result())
        finally:
            stream.close()

    def close(self) -> None:
        self.reader.close()
