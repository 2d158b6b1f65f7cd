"""The slide stream: one read -> decode -> infer -> write pipeline per process that never drains.

Slides enter with ``submit`` and leave, written, through their futures. Three stages, each in its
own thread, joined by bounded queues:

    decode   next slide: its old marker removed, store opened; its batches read, decoded and
             quality-checked -> at most ``DECODE_AHEAD`` batches queued
    infer    each batch into its slide's accumulator, and nothing else (on a CPU the inference
             is the slowest stage: any other work on its thread would idle the cores it uses)
             -> at most ``WRITE_AHEAD`` classified slides queued
    write    post-process (the cells table and differential row), then cells.parquet, the
             histogram and the marker; the slide's future resolves

So slide k+1's first batches are read and decoded while slide k's last ones infer, and slide k is
written while slide k+1 infers: a 200-cell slide costs the pipeline nothing at its boundaries.
A failure belongs to its slide (a failed status and marker); the stream goes on with the next. A
decode stage that hangs fails every slide in flight after ``timeout`` seconds and stops the stream.

The local runner feeds it the whole plan; on a Dask worker each task submits its one slide to the
worker's stream, and the worker's spare task threads keep the next slides queued.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from bmengine.engine.pipeline.classify import SlideAccumulator, decode_batch
from bmengine.engine.pipeline.slide_job import (
    SlideJob,
    SlideOutput,
    SlideStatus,
    begin_slide,
    failed_slide,
    record_slide,
    summarize,
)
from bmengine.engine.pipeline.stages import DECODE_AHEAD

#: finished slides waiting for the writer (each holds its cells table)
WRITE_AHEAD = 2
_STOP = object()


@dataclass(eq=False)
class _Slide:
    """A slide in flight, from submit to its marker."""

    job: SlideJob
    store: object | None
    future: Future = field(default_factory=Future)
    t0: float = 0.0
    accumulator: SlideAccumulator | None = None
    output: SlideOutput | None = None
    error: BaseException | None = None
    trace: str | None = None

    def fail(self, error: BaseException) -> None:
        if self.error is None:  # the first failure is the one worth naming
            self.error, self.trace = error, traceback.format_exc()


class SlideStream:
    def __init__(self, engine, reader, worker: str = "local", on_started: Callable[[SlideJob], None] | None = None,
                 on_crops: Callable[[int], None] | None = None, timeout: float = 600.0):
        self.engine, self.reader, self.worker = engine, reader, worker
        self.on_started, self.on_crops, self.timeout = on_started, on_crops, timeout
        self._slides: queue.Queue = queue.Queue()  # callers bound how much they submit
        self._batches: queue.Queue = queue.Queue(maxsize=DECODE_AHEAD)
        self._finished: queue.Queue = queue.Queue(maxsize=WRITE_AHEAD)
        self._in_flight: set[_Slide] = set()
        self._lock = threading.Lock()
        self._broken: BaseException | None = None
        self._threads = [threading.Thread(target=self._guard, args=(loop,), name=f"bmengine-{name}", daemon=True)
                         for name, loop in (("decode", self._decode_loop), ("infer", self._infer_loop),
                                            ("write", self._write_loop))]
        for thread in self._threads:
            thread.start()

    def submit(self, job: SlideJob, store=None) -> "Future[tuple[SlideStatus, dict | None]]":
        """Queue a slide; its future gives (status, differential row or None). ``store``: the job's
        store if the caller has it open already."""
        slide = _Slide(job, store)
        with self._lock:
            if self._broken is not None:
                slide.future.set_result(failed_slide(job, self._broken, self.worker, 0.0))
                return slide.future
            self._in_flight.add(slide)
        self._slides.put(slide)
        return slide.future

    def close(self) -> None:
        """Finish what was submitted, then stop the stages (a broken stream's stuck stage is a
        daemon thread: it is left behind, not waited for)."""
        self._slides.put(_STOP)
        for thread in self._threads:
            thread.join(timeout=5.0 if self._broken is not None else self.timeout)

    # -- stages ------------------------------------------------------------------------------------

    def _decode_loop(self) -> None:
        from bmengine.engine.store import SlideStore

        engine = self.engine
        while (slide := self._slides.get()) is not _STOP:
            slide.t0 = time.perf_counter()
            try:
                if self.on_started:
                    self.on_started(slide.job)
                begin_slide(slide.job)
                store = slide.store if slide.store is not None else SlideStore.open(slide.job.store)
                slide.store, slide.accumulator = store, SlideAccumulator(store, engine.backend)
                batches = self.reader.iter_batches(store, engine.spec.batch_size, limits=engine.spec.limits)
                for batch in batches:
                    self._put(self._batches, (slide, batch, decode_batch(batch, engine.pipeline, engine.backend)))
            except Exception as exc:
                slide.fail(exc)
            self._put(self._batches, (slide, None))  # the slide's end
        self._put(self._batches, _STOP)

    def _infer_loop(self) -> None:
        while (item := self._get_batch()) is not _STOP:
            slide, batch = item[0], item[1]
            if batch is not None:
                if slide.error is None:
                    try:
                        slide.accumulator.add(batch, item[2])
                    except Exception as exc:
                        slide.fail(exc)
                    else:
                        if self.on_crops:
                            self.on_crops(batch.stop - batch.start)
                continue
            self._put(self._finished, slide)
        self._put(self._finished, _STOP)

    def _write_loop(self) -> None:
        _import_post_processing()  # while the first slide is read and classified, not after it
        while (slide := self._finished.get()) is not _STOP:
            try:
                if slide.error is None:
                    slide.output = summarize(slide.store, slide.accumulator.finish(), self.engine)
            except Exception as exc:
                slide.fail(exc)
            slide.accumulator = None  # its arrays live on in the output only
            try:
                if slide.error is not None:
                    result = failed_slide(slide.job, slide.error, self.worker, time.perf_counter() - slide.t0,
                                          slide.trace)
                else:
                    result = record_slide(slide.job, slide.output, self.engine, self.worker, slide.t0)
            except Exception as exc:
                result = failed_slide(slide.job, exc, self.worker, time.perf_counter() - slide.t0)
            slide.output = None
            self._resolve(slide, result)

    # -- plumbing ----------------------------------------------------------------------------------

    def _resolve(self, slide: _Slide, result) -> None:
        with self._lock:
            self._in_flight.discard(slide)
        if not slide.future.done():
            slide.future.set_result(result)

    def _put(self, target: queue.Queue, item) -> None:
        while True:
            if self._broken is not None:
                raise _Stopped
            try:
                target.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _get_batch(self):
        """The next decoded batch; a decode stage silent for ``timeout`` while slides wait breaks the stream."""
        waited = 0.0
        while True:
            try:
                return self._batches.get(timeout=1.0)
            except queue.Empty:
                with self._lock:
                    busy = bool(self._in_flight)
                waited = waited + 1.0 if busy else 0.0
                if waited >= self.timeout:
                    raise TimeoutError(f"no batch from the decode stage within {self.timeout:.0f}s")

    def _guard(self, loop: Callable[[], None]) -> None:
        """Run a stage; if it dies, every slide in flight fails with its error and the stream stops."""
        try:
            loop()
        except _Stopped:
            return
        except BaseException as exc:
            with self._lock:
                self._broken = exc
                stranded, self._in_flight = list(self._in_flight), set()
            for slide in stranded:
                if not slide.future.done():
                    slide.future.set_result(failed_slide(slide.job, exc, self.worker,
                                                         time.perf_counter() - slide.t0 if slide.t0 else 0.0))


def _import_post_processing() -> None:
    """Import what the write stage needs (pandas' writers, SciPy's special functions: most of a
    second) up front, in this thread: lazily, on the first slide, the imports would hold the
    interpreter while the other stages wait."""
    import bmengine.engine.outputs.differential  # noqa: F401
    import bmengine.engine.outputs.plots  # noqa: F401
    import bmengine.engine.outputs.report  # noqa: F401


class _Stopped(Exception):
    """Raised inside a stage when another stage broke the stream."""
