"""The Dask crop reader: batches in order with the store's own bytes, a bounded read-ahead window,
and a scheduler given by address (a real local cluster, its workers in other processes)."""

from __future__ import annotations

import pytest

from bmengine.engine.pipeline.reader import DaskCropReader, batch_ranges
from bmengine.engine.store import SlideStore, write_slide_store
from conftest import pbc_files

N_CROPS, BATCH = 23, 5  # the last batch is short


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    """A slide store of 23 real crops from three classes."""
    files = [f for cls in ("basophil", "monocyte", "platelet") for f in pbc_files(cls, 8)][:N_CROPS]
    path = tmp_path_factory.mktemp("reader") / "R1.zarr"
    return write_slide_store(path, "R1", [f.read_bytes() for f in files], [f.name for f in files])


@pytest.fixture(scope="module")
def reader():
    with DaskCropReader(threads=2, prefetch=2) as r:  # its own in-process cluster, as `bmengine run`
        yield r


def _expected(store_path) -> list[bytes]:
    store = SlideStore.open(store_path)
    return store.read_crops(0, store.n_cells)


def test_batch_ranges_cover_every_cell_once():
    assert batch_ranges(23, 5) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert batch_ranges(0, 5) == [] and batch_ranges(5, 5) == [(0, 5)]


def test_batches_come_in_order_with_the_stores_bytes(reader, store_path):
    batches = list(reader.iter_batches(store_path, N_CROPS, BATCH))
    assert [(b.start, b.stop) for b in batches] == batch_ranges(N_CROPS, BATCH)
    assert [c for b in batches for c in b.crops] == _expected(store_path)
    assert all(e is None for b in batches for e in b.errors)


def test_start_at_a_batch_boundary_skips_the_batches_before_it(reader, store_path):
    batches = list(reader.iter_batches(store_path, N_CROPS, BATCH, start_at=10))
    assert [b.start for b in batches] == [10, 15, 20]
    assert [c for b in batches for c in b.crops] == _expected(store_path)[10:]


class _CountingSubmits:
    """Wraps the reader's real client to count the reads it has asked for (nothing is faked)."""

    def __init__(self, client):
        self.client, self.submitted = client, 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return self.client.submit(*args, **kwargs)


@pytest.mark.parametrize("prefetch", [0, 2, 10])
def test_reads_stay_within_the_prefetch_window(reader, store_path, prefetch, monkeypatch):
    """After the consumer has taken k batches, exactly min(k + prefetch, all) reads were asked for:
    the reader reads ahead, but never more than ``prefetch`` batches (memory stays flat)."""
    counter = _CountingSubmits(reader.client)
    monkeypatch.setattr(reader, "client", counter)
    monkeypatch.setattr(reader, "prefetch", prefetch)
    n_batches = len(batch_ranges(N_CROPS, BATCH))
    seen = []
    for k, batch in enumerate(reader.iter_batches(store_path, N_CROPS, BATCH), start=1):
        seen.append(counter.submitted)
        assert batch.start == (k - 1) * BATCH
    assert seen == [min(k + prefetch, n_batches) for k in range(1, n_batches + 1)]


@pytest.fixture(scope="module")
def process_cluster():
    """A real cluster whose worker runs in its own process, as on another machine seeing the same files."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster


def test_a_scheduler_address_reads_through_that_cluster(store_path, process_cluster):
    """The task, its arguments and its result travel between processes; closing the reader
    leaves the cluster it did not start running."""
    from distributed import Client

    address = process_cluster.scheduler_address
    with DaskCropReader(scheduler=address, prefetch=1) as reader:
        assert reader.cluster is None and reader.client.scheduler.address == address
        batches = list(reader.iter_batches(store_path, N_CROPS, BATCH))
        workers = set(reader.client.scheduler_info()["workers"])
    assert [c for b in batches for c in b.crops] == _expected(store_path)
    assert all(e is None for b in batches for e in b.errors)
    assert workers == set(process_cluster.scheduler_info["workers"])
    with Client(address, timeout="10s") as other:  # still serving
        assert other.submit(sum, [1, 2]).result(timeout=30) == 3


def _rewrite_and_read(path, scheduler: str | None) -> None:
    first = [f.read_bytes() for f in pbc_files("lymphocyte", 6)]
    second = [f.read_bytes() for f in pbc_files("eosinophil", 9)]
    write_slide_store(path, "R2", first, [str(i) for i in range(6)])
    with DaskCropReader(scheduler=scheduler, threads=1, prefetch=1) as reader:
        assert [c for b in reader.iter_batches(path, 6, BATCH) for c in b.crops] == first
    write_slide_store(path, "R2", second, [str(i) for i in range(9)])
    with DaskCropReader(scheduler=scheduler, threads=1, prefetch=1) as reader:
        assert [c for b in reader.iter_batches(path, 9, BATCH) for c in b.crops] == second


def test_a_store_rewritten_under_the_same_path_is_read_afresh(tmp_path):
    """A slide re-ingested under the same path between two runs must be read from disk again."""
    _rewrite_and_read(tmp_path / "R2.zarr", scheduler=None)


def test_a_rewritten_store_is_read_afresh_by_a_cluster_that_outlives_the_run(tmp_path, process_cluster):
    _rewrite_and_read(tmp_path / "R3.zarr", scheduler=process_cluster.scheduler_address)
