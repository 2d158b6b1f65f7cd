"""Stream crop bytes out of slide stores in batches, through Dask.

Each batch is one task that reads one contiguous byte range of a store, so a Dask cluster (a
local one by default, or a remote scheduler's workers that see the same files) reads ahead while
the engine decodes and infers. A bounded window of futures keeps memory flat on huge slides.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator

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


def _identity(path: str) -> tuple[int, int, int]:
    """Which store is at ``path`` now: a re-ingested store is moved into place, so its zarr.json is a
    new file. One stat per batch; part of the cache key, so no process (a long-lived Dask worker
    included) ever reads a new store through the offsets of an old one."""
    info = os.stat(Path(path) / "zarr.json")
    return info.st_ino, info.st_mtime_ns, info.st_size


@lru_cache(maxsize=64)
def _open_store(path: str, identity: tuple[int, int, int]):
    from bmengine.engine.store import SlideStore

    return SlideStore.open(Path(path))


def read_batch(store_path: str, start: int, stop: int, limits: InputLimits | None = None) -> CropBatch:
    """The Dask task: crops [start, stop), checked against the size cap and their ingest checksums."""
    crops, errors = _open_store(store_path, _identity(store_path)).read_crops_checked(start, stop, limits)
    return CropBatch(start, stop, crops, errors)


class DaskCropReader:
    """Owns a Dask client: a local in-process cluster unless a scheduler address is given."""

    def __init__(self, scheduler: str | None = None, threads: int = 2, prefetch: int = 4):
        from distributed import Client, LocalCluster

        self.prefetch = prefetch
        if scheduler:
            self.cluster = None
            self.client = Client(scheduler, timeout="30s")
        else:
            self.cluster = LocalCluster(
                n_workers=1, threads_per_worker=threads, processes=False, dashboard_address=None
            )
            self.client = Client(self.cluster)

    def iter_batches(self, store_path: Path, n_cells: int, batch_size: int, start_at: int = 0,
                     limits: InputLimits | None = None) -> Iterator[CropBatch]:
        """Yield batches in order, keeping ``prefetch`` reads in flight ahead of the consumer."""
        ranges = [r for r in batch_ranges(n_cells, batch_size) if r[0] >= start_at]
        pending: deque = deque()
        for start, stop in ranges:
            pending.append(self.client.submit(read_batch, str(store_path), start, stop, limits, pure=False))
            if len(pending) > self.prefetch:
                yield pending.popleft().result(timeout=600)
        while pending:
            yield pending.popleft().result(timeout=600)

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def __enter__(self) -> "DaskCropReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class LocalCropReader:
    """The reader of a Dask worker: batches read in this process, one read ahead in a thread
    (a worker already is the parallel unit; it never ships bytes anywhere)."""

    def __init__(self, prefetch: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self.prefetch = prefetch
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bmengine-read")

    def iter_batches(self, store_path: Path, n_cells: int, batch_size: int, start_at: int = 0,
                     limits: InputLimits | None = None) -> Iterator[CropBatch]:
        ranges = [r for r in batch_ranges(n_cells, batch_size) if r[0] >= start_at]
        pending: deque = deque()
        for start, stop in ranges:
            pending.append(self.pool.submit(read_batch, str(store_path), start, stop, limits))
            if len(pending) > self.prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
