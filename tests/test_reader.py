"""The crop reader: batches of an open store in order with the store's own bytes, a bounded
read-ahead window, and a long-lived stream that reads a re-ingested store afresh."""

from __future__ import annotations

import pytest

from bmengine.engine.pipeline.reader import LocalCropReader, batch_ranges
from bmengine.engine.store import SlideStore, write_slide_store
from conftest import pbc_files

N_CROPS, BATCH = 23, 5  # the last batch is short


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> SlideStore:
    """A slide store of 23 real crops from three classes."""
    files = [f for cls in ("basophil", "monocyte", "platelet") for f in pbc_files(cls, 8)][:N_CROPS]
    path = tmp_path_factory.mktemp("reader") / "R1.zarr"
    return SlideStore.open(write_slide_store(path, "R1", [f.read_bytes() for f in files], [f.name for f in files]))


@pytest.fixture()
def reader():
    r = LocalCropReader(prefetch=2)
    yield r
    r.close()


def test_batch_ranges_cover_every_cell_once():
    assert batch_ranges(23, 5) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert batch_ranges(0, 5) == [] and batch_ranges(5, 5) == [(0, 5)]


def test_batches_come_in_order_with_the_stores_bytes(reader, store):
    batches = list(reader.iter_batches(store, BATCH))
    assert [(b.start, b.stop) for b in batches] == batch_ranges(N_CROPS, BATCH)
    assert [c for b in batches for c in b.crops] == store.read_crops(0, N_CROPS)
    assert all(e is None for b in batches for e in b.errors)


def test_start_at_and_stop_bound_the_cells_read(reader, store):
    batches = list(reader.iter_batches(store, BATCH, start_at=10))
    assert [b.start for b in batches] == [10, 15, 20]
    assert [c for b in batches for c in b.crops] == store.read_crops(10, N_CROPS)
    head = list(reader.iter_batches(store, BATCH, stop=12))
    assert [(b.start, b.stop) for b in head] == [(0, 5), (5, 10), (10, 12)]


class _CountingSubmits:
    """Wraps the reader's real thread pool to count the reads it has asked for (nothing is faked)."""

    def __init__(self, pool):
        self.pool, self.submitted = pool, 0

    def submit(self, *args, **kwargs):
        self.submitted += 1
        return self.pool.submit(*args, **kwargs)


@pytest.mark.parametrize("prefetch", [0, 2, 10])
def test_reads_stay_within_the_prefetch_window(store, prefetch):
    """After the consumer has taken k batches, exactly min(k + prefetch, all) reads were asked
    for: the reader reads ahead, but never more than ``prefetch`` batches (memory stays flat)."""
    reader = LocalCropReader(prefetch=prefetch)
    counter = _CountingSubmits(reader.pool)
    reader.pool = counter
    n_batches = len(batch_ranges(N_CROPS, BATCH))
    seen = []
    for k, batch in enumerate(reader.iter_batches(store, BATCH), start=1):
        seen.append(counter.submitted)
        assert batch.start == (k - 1) * BATCH
    counter.pool.shutdown()
    assert seen == [min(k + prefetch, n_batches) for k in range(1, n_batches + 1)]


def test_a_store_rewritten_under_the_same_path_is_read_afresh_by_a_long_lived_stream(tmp_path, tiny_model):
    """A Dask worker's stream outlives many slides: a slide re-ingested under the same path between
    two submissions must be classified from its new crops, not from anything kept of the old store."""
    import pandas as pd

    from bmengine.engine.pipeline import resume
    from bmengine.engine.pipeline.engine import Engine, EngineSpec
    from bmengine.engine.pipeline.slide_job import SlideJob
    from bmengine.engine.pipeline.stream import SlideStream

    path = tmp_path / "R2.zarr"
    first = pbc_files("lymphocyte", 6)
    second = pbc_files("eosinophil", 9)
    engine = Engine.load(EngineSpec(tiny_model, batch_size=4, threads=1))
    stream = SlideStream(engine, LocalCropReader())

    def classify(files, out):
        write_slide_store(path, "R2", [f.read_bytes() for f in files], [f.name for f in files])
        key = resume.resume_key(SlideStore.open(path).content_hash(), engine.card.weights_sha256,
                                engine.card_sha256, engine.spec.limits, engine.label_map.mapping)
        status, _ = stream.submit(SlideJob(path, "R2", out, key, len(files))).result(timeout=120)
        assert status.status == "ok", status.error
        return pd.read_parquet(out / "cells.parquet")["source"].tolist()

    try:
        assert classify(first, tmp_path / "a") == [f.name for f in first]
        assert classify(second, tmp_path / "b") == [f.name for f in second]
    finally:
        stream.close()
        engine.close()
