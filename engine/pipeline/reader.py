"""Stream crop bytes out of slide stores in batches, read ahead of decoding.

Each batch is one read of one contiguous byte range of a store (``read_batch``), checked against
the size cap and the crops' ingest checksums. Reads run in the process that classifies the slide,
a bounded window ahead, so memory stays flat on huge slides. (Across machines, whole slides go to
Dask workers as paths: engine/pipeline/dask_runner.py; crop bytes never travel.)
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Protocol

from bmengine.engine.store.limits import InputLimits


@dataclass(frozen=True)
class CropBatch:
    """Crops ``[start, stop)``; ``crops[i]`` is None where ``errors[i]`` says why it must not be used."""

    start: int
    stop: int
    crops: list[bytes | None]
    errors: list[str | None] = field(default_factory=list)


def batch_ranges(n_cells: int, batch_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + batch_size, n_cells)) for start in range(0, n_cells, batch_size)]


def read_batch(store, start: int, stop: int, limits: InputLimits | None = None) -> CropBatch:
    """One read: crops [start, stop) of an open ``SlideStore``, checked against the size cap and
    their ingest checksums."""
    crops, errors = store.read_crops_checked(start, stop, limits)
    return CropBatch(start, stop, crops, errors)


class CropReader(Protocol):
    """Where a slide stream's crop bytes come from: batches in order, read ahead of the consumer."""

    def iter_batches(self, store, batch_size: int, start_at: int = 0, stop: int | None = None,
                     limits: InputLimits | None = None) -> Iterator[CropBatch]: ...

    def close(self) -> None: ...


class LocalCropReader:
    """Batches read in this process, ``prefetch`` reads ahead in a thread: the local runner's reader
    and every Dask worker's (a worker is already the parallel unit; bytes never travel)."""

    def __init__(self, prefetch: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.prefetch = prefetch
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmengine-read")

    def iter_batches(self, store, batch_size: int, start_at: int = 0, stop: int | None = None,
                     limits: InputLimits | None = None) -> Iterator[CropBatch]:
        """Batches of the open ``store`` in order, cells [start_at, stop) (default: all of them).
        Reading the store the caller opened (and validated) costs no second open per slide."""
        n_cells = store.n_cells if stop is None else min(stop, store.n_cells)
        ranges = [r for r in batch_ranges(n_cells, batch_size) if r[0] >= start_at]
        pending: deque = deque()
        for lo, hi in ranges:
            pending.append(self.pool.submit(read_batch, store, lo, hi, limits))
            if len(pending) > self.prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
