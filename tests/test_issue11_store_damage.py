"""Issue 11, item 4: silent store corruption.

Seen: flipped bytes inside a crop's JPEG data gave another class, counted, exit 0 (`run` never
checked ``crops_sha256``); a deleted chunk file was read as zeros and the slide said "ok"; a
truncated chunk printed a Dask traceback. Now every crop is checked against its ingest-time CRC-32
as it is read, and a missing or truncated chunk fails the slide with a message naming store and
chunk.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import zarr

from bmengine.engine.store import SlideStore, SlideStoreError
from bmengine.engine.store.slide_store import ATTRS_KEY, StoreDamagedError
from cli_helpers import bmengine, crop_folder, ingest

SLIDES = {"A": {"eosinophil": 4, "platelet": 4}, "B": {"lymphocyte": 5}}


@pytest.fixture(scope="module")
def clean_slides(tmp_path_factory):
    root = tmp_path_factory.mktemp("damage")
    ingest(crop_folder(root / "crops", SLIDES), root / "slides")
    return root / "slides"


@pytest.fixture()
def slides(clean_slides, tmp_path):
    copy = tmp_path / "slides"
    shutil.copytree(clean_slides, copy)
    return copy


def _flip_inside_crop(store_path, cell: int) -> None:
    """Flip bytes in the middle of one crop's entropy-coded data, as a bad disk sector would."""
    store = SlideStore.open(store_path)
    offsets = zarr.open_array(str(store_path / "crops" / "offsets"), mode="r")[:]
    chunk = store_path / "crops" / "bytes" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    middle = (int(offsets[cell]) + int(offsets[cell + 1])) // 2
    data[middle : middle + 8] = bytes(b ^ 0x5A for b in data[middle : middle + 8])
    chunk.write_bytes(bytes(data))
    assert store.n_cells > cell


def _run(slides, model, out):
    return bmengine("run", slides, "--model", model, "--out", out, "--batch-size", "8")


def _statuses(out):
    return {s["slide_id"]: s for s in json.loads((out / "run.json").read_text())["slides"]}


def test_flipped_bytes_in_a_crop_become_a_store_damage_error_row(slides, tiny_model, tmp_path):
    _flip_inside_crop(slides / "A.zarr", cell=2)
    out = tmp_path / "out"
    result = _run(slides, tiny_model, out)
    assert result.returncode == 3, result.stderr
    cells = pd.read_parquet(out / "A" / "cells.parquet")
    damaged = cells[cells["error"].notna()]
    assert damaged["cell_index"].tolist() == [2]
    assert damaged["error"].iloc[0].startswith("store damaged") and "A.zarr" in damaged["error"].iloc[0]
    assert pd.isna(damaged["predicted"].iloc[0])
    differential = pd.read_csv(out / "differential.csv").set_index("slide_id")
    assert differential.loc["A", "n_cells"] + differential.loc["A", "n_flagged"] == 7
    assert "store damaged" in result.stderr  # named on the console


def test_a_damaged_slide_is_redone_after_repair(slides, clean_slides, tiny_model, tmp_path):
    _flip_inside_crop(slides / "A.zarr", cell=0)
    out = tmp_path / "out"
    _run(slides, tiny_model, out)
    shutil.copy(clean_slides / "A.zarr" / "crops" / "bytes" / "c" / "0", slides / "A.zarr" / "crops" / "bytes" / "c" / "0")
    result = _run(slides, tiny_model, out)
    assert result.returncode == 0, result.stderr
    assert {k: v["status"] for k, v in _statuses(out).items()} == {"A": "ok", "B": "skipped"}
    assert pd.read_parquet(out / "A" / "cells.parquet")["error"].isna().all()


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_lost_chunk_fails_its_slide_naming_store_and_chunk(slides, tiny_model, tmp_path, damage):
    chunk = slides / "A.zarr" / "crops" / "bytes" / "c" / "0"
    if damage == "deleted":
        chunk.unlink()
    else:
        data_end = int(zarr.open_array(str(slides / "A.zarr" / "crops" / "offsets"), mode="r")[-1])
        chunk.write_bytes(chunk.read_bytes()[: data_end // 2])  # the chunk file is padded beyond the data
    out = tmp_path / "out"
    result = _run(slides, tiny_model, out)
    assert result.returncode == 1
    status = _statuses(out)
    assert status["B"]["status"] == "ok" and status["A"]["status"] == "failed"
    assert "A.zarr" in status["A"]["error"] and "crops/bytes/c/0" in status["A"]["error"]
    assert ("missing" if damage == "deleted" else "truncated") in status["A"]["error"]
    assert "Traceback" not in result.stderr and "distributed" not in result.stderr
    assert "crops/bytes/c/0" in result.stderr


def test_a_lost_per_cell_chunk_is_refused_on_open(slides):
    (slides / "A.zarr" / "cells" / "label" / "c" / "0").unlink()  # zarr would read it as zeros: label 0
    with pytest.raises(StoreDamagedError, match=r"A\.zarr.*cells/label/c/0 is missing"):
        SlideStore.open(slides / "A.zarr")


def test_per_crop_checksums_are_written_and_cover_every_crop(slides):
    store = SlideStore.open(slides / "A.zarr")
    assert store.has_crop_checksums
    crops, errors = store.read_crops_checked(0, store.n_cells)
    assert errors == [None] * store.n_cells and crops == store.read_crops(0, store.n_cells)


def _as_old_format(store_path) -> None:
    """What bmengine 0.1 wrote: no per-crop CRC-32, no per-cell digest (only ``crops_sha256``)."""
    shutil.rmtree(store_path / "crops" / "crc32")
    meta = json.loads((store_path / "zarr.json").read_text())
    del meta["attributes"][ATTRS_KEY]["cells_sha256"]
    (store_path / "zarr.json").write_text(json.dumps(meta))


def test_old_stores_without_checksums_still_run_and_damage_fails_the_slide(slides, tiny_model, tmp_path):
    _as_old_format(slides / "A.zarr")
    _as_old_format(slides / "B.zarr")
    assert not SlideStore.open(slides / "A.zarr").has_crop_checksums
    _flip_inside_crop(slides / "A.zarr", cell=1)
    out = tmp_path / "out"
    result = _run(slides, tiny_model, out)
    status = _statuses(out)
    assert status["B"]["status"] == "ok" and status["B"]["n_errors"] == 0
    assert status["A"]["status"] == "failed" and "crops_sha256" in status["A"]["error"]
    assert result.returncode == 1


def test_an_oversized_store_is_refused_before_its_arrays_are_read(slides):
    meta_path = slides / "A.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"][ATTRS_KEY]["n_cells"] = 10**9
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SlideStoreError, match="above the 5,000,000"):
        SlideStore.open(slides / "A.zarr")
