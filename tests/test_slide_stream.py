"""Issue 12, item 3: a stream that never drains between slides, with writing off the hot path.

Real stores ingested from PBC crops, the real tiny model and reader. The stream must give each
slide exactly what classifying it alone gives, start decoding slide k+1 before slide k is written,
keep one bad slide from touching the others, and never hang on a stuck decode stage.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from bmengine.engine.pipeline.resume import MARKER
from cli_helpers import crop_folder, ingest

# sizes that are not multiples of the batch (8): every slide ends on a partial batch
SLIDES = {"s1": {"lymphocyte": 7, "neutrophil": 6}, "s2": {"monocyte": 5}, "s3": {"eosinophil": 9, "ig": 4},
          "s4": {"basophil": 3}, "s5": {"platelet": 6, "neutrophil": 5}}
BATCH = 8


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("stream")
    ingest(crop_folder(root / "crops", SLIDES), root / "slides")
    return sorted((root / "slides").glob("*.zarr"))


@pytest.fixture(scope="module")
def engine(tiny_model):
    from bmengine.engine.pipeline.engine import Engine, EngineSpec

    engine = Engine.load(EngineSpec(tiny_model, batch_size=BATCH, threads=2))
    yield engine
    engine.close()


def _job(engine, store_path: Path, out: Path):
    from bmengine.engine.pipeline import resume
    from bmengine.engine.pipeline.slide_job import SlideJob
    from bmengine.engine.store import SlideStore

    store = SlideStore.open(store_path)
    key = resume.resume_key(store.content_hash(), engine.card.weights_sha256, engine.card_sha256,
                            engine.spec.limits, engine.label_map.mapping)
    return SlideJob(store_path, store.slide_id, out / store.slide_id, key, store.n_cells)


def _stream(engine, **kwargs):
    from bmengine.engine.pipeline.reader import LocalCropReader
    from bmengine.engine.pipeline.stream import SlideStream

    return SlideStream(engine, LocalCropReader(), **kwargs)


def test_streamed_slides_equal_slides_classified_one_at_a_time(engine, stores, tmp_path):
    from bmengine.engine.pipeline.reader import LocalCropReader
    from bmengine.engine.pipeline.slide_job import run_slide

    alone, streamed = tmp_path / "alone", tmp_path / "streamed"
    reader = LocalCropReader()
    expected = [run_slide(_job(engine, path, alone), engine, reader) for path in stores]
    stream = _stream(engine)
    futures = [stream.submit(_job(engine, path, streamed)) for path in stores]
    got = [future.result(timeout=120) for future in futures]
    stream.close()

    for (status, row), (want_status, want_row) in zip(got, expected):
        assert status.status == want_status.status == "ok"
        assert status.n_crops == want_status.n_crops and row == want_row
        cells = pd.read_parquet(streamed / status.slide_id / "cells.parquet")
        pd.testing.assert_frame_equal(cells, pd.read_parquet(alone / status.slide_id / "cells.parquet"))
        assert cells["cell_index"].tolist() == list(range(status.n_crops))  # every crop once
        assert (streamed / status.slide_id / "histogram.svg").stat().st_size > 0
        marker = json.loads((streamed / status.slide_id / MARKER).read_text())
        assert marker["status"] == "ok" and marker["row"].keys() == want_row.keys()
        assert all(got == want or (got != got and want != want)  # NaN (an undefined ratio) equals NaN here
                   for got, want in zip(marker["row"].values(), (want_row[k] for k in marker["row"])))


def test_the_next_slide_is_decoding_before_the_previous_one_is_written(engine, stores, tmp_path):
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def started(job):
        with lock:
            events.append(("started", job.slide_id))

    stream = _stream(engine, on_started=started)
    futures = []
    for path in stores:
        future = stream.submit(_job(engine, path, tmp_path))
        future.add_done_callback(lambda f: (lock.acquire(), events.append(("written", f.result()[0].slide_id)),
                                            lock.release()))
        futures.append(future)
    for future in futures:
        future.result(timeout=120)
    stream.close()

    ids = [path.name.removesuffix(".zarr") for path in stores]
    order = {event: i for i, event in enumerate(events)}
    assert [slide for kind, slide in events if kind == "written"] == ids  # one stream: slides leave in order
    overlapped = [k for k in range(len(ids) - 1) if order[("started", ids[k + 1])] < order[("written", ids[k])]]
    assert overlapped == list(range(len(ids) - 1)), events  # no slide boundary drained the pipeline


def test_a_broken_store_fails_its_slide_and_the_stream_goes_on(engine, stores, tmp_path):
    broken = tmp_path / "broken.zarr"
    shutil.copytree(stores[1], broken)
    for chunk in (broken / "crops" / "bytes").rglob("*"):  # zero every chunk of encoded crops on disk
        if chunk.is_file() and chunk.name != "zarr.json":
            chunk.write_bytes(b"\0" * chunk.stat().st_size)
    paths = [stores[0], broken, stores[2]]
    jobs = [_job(engine, path, tmp_path / "out") for path in paths]

    stream = _stream(engine)
    results = [future.result(timeout=120) for future in [stream.submit(job) for job in jobs]]
    stream.close()

    (ok1, row1), (bad, row_bad), (ok2, row2) = results
    assert ok1.status == ok2.status == "ok" and row1 and row2
    assert ok1.n_errors == ok2.n_errors == 0
    # the damaged slide: every crop refused by its ingest checksum, none classified or counted
    assert bad.status == "ok" and bad.n_errors == bad.n_crops == row_bad["n_errors"]
    assert all("store damaged" in example for example in bad.error_examples)


def test_a_missing_store_fails_only_its_slide(engine, stores, tmp_path):
    from bmengine.engine.pipeline.slide_job import SlideJob

    good = _job(engine, stores[0], tmp_path)
    missing = SlideJob(tmp_path / "gone.zarr", "gone", tmp_path / "gone", good.key, 10)
    stream = _stream(engine)
    results = [f.result(timeout=120) for f in [stream.submit(missing), stream.submit(good)]]
    stream.close()
    assert results[0][0].status == "failed" and "gone.zarr" in results[0][0].error
    assert results[1][0].status == "ok"


class _StuckReader:
    """A reader whose first read never returns: a decode stage that hangs."""

    def __init__(self):
        self.release = threading.Event()

    def iter_batches(self, *args, **kwargs):
        self.release.wait(60)
        yield from ()


def test_a_stuck_decode_stage_fails_the_slides_in_flight_instead_of_hanging(engine, stores, tmp_path):
    from bmengine.engine.pipeline.stream import SlideStream

    reader = _StuckReader()
    stream = SlideStream(engine, reader, timeout=2.0)
    t0 = time.perf_counter()
    futures = [stream.submit(_job(engine, path, tmp_path)) for path in stores[:2]]
    statuses = [future.result(timeout=30)[0] for future in futures]
    assert time.perf_counter() - t0 < 20
    assert [s.status for s in statuses] == ["failed", "failed"]
    assert all("decode stage" in s.error for s in statuses)
    late = stream.submit(_job(engine, stores[2], tmp_path)).result(timeout=5)[0]  # a broken stream says so at once
    assert late.status == "failed"
    reader.release.set()
    stream.close()
