"""Slide stores: real crops go in and come out byte-identical; every malformed store is named and explained."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bmengine.engine import __version__
from bmengine.engine.store import (
    FORMAT_CODES,
    SlideStore,
    SlideStoreError,
    find_slide_stores,
    write_slide_store,
)
from bmengine.engine.store.slide_store import ATTRS_KEY, BYTES_CHUNK

from conftest import PBC


def real_jpegs(n: int) -> list[Path]:
    """``n`` real PBC crops, taken round-robin over the classes (sorted, so stable)."""
    per_class = [sorted((PBC / c).glob("*.jpg")) for c in sorted(p.name for p in PBC.iterdir() if p.is_dir())]
    picked = [files[i] for i in range(n) for files in per_class if i < len(files)]
    return picked[:n]


@pytest.fixture(scope="module")
def jpegs() -> list[Path]:
    return real_jpegs(24)


@pytest.fixture
def store_path(tmp_path, jpegs) -> Path:
    labels = [f.parent.name for f in jpegs]
    labels[3] = None  # an unknown label
    return write_slide_store(
        tmp_path / "P01-A.zarr", "P01-A", [f.read_bytes() for f in jpegs], [f"{f.parent.name}/{f.name}" for f in jpegs],
        patient_id="P01", labels=labels, provenance={"source": "pbc test subset", "note": "ünïcode ok"},
    )


def _set_attr(path: Path, **changes) -> None:
    import zarr

    group = zarr.open_group(str(path), mode="r+")
    group.attrs[ATTRS_KEY] = {**group.attrs[ATTRS_KEY], **changes}


def _overwrite(path: Path, name: str, values: np.ndarray) -> None:
    import zarr

    zarr.open_group(str(path), mode="r+")[name][:] = values


# -- round trips ------------------------------------------------------------------------------

def test_real_jpegs_round_trip_byte_identical(store_path, jpegs):
    store = SlideStore.open(store_path)
    originals = [f.read_bytes() for f in jpegs]
    assert store.read_crops(0, store.n_cells) == originals  # never re-encoded
    assert store.read_crops(5, 9) == originals[5:9]
    assert store.read_crops(7, 7) == []
    assert store.n_cells == len(jpegs) and store.slide_id == "P01-A" and store.patient_id == "P01"
    assert store.formats().tolist() == [FORMAT_CODES["jpeg"]] * len(jpegs)
    assert store.sources() == [f"{f.parent.name}/{f.name}" for f in jpegs]
    expected = [f.parent.name for f in jpegs]
    expected[3] = None
    assert store.labels() == expected
    assert store.label_names == sorted({x for x in expected if x})
    assert store.provenance == {"source": "pbc test subset", "note": "ünïcode ok"}
    attrs = store.attrs
    assert attrs["format"] == "bmengine.slide-store" and attrs["format_version"] == 1
    assert attrs["created_by"] == {"software": "bmengine", "version": __version__}
    assert attrs["created_at"].endswith("+00:00")
    store.verify()


def test_crops_spanning_chunks_read_the_same_as_through_zarr(tmp_path):
    files = real_jpegs(320)  # ~5.5 MB: more than one 4 MiB chunk
    crops = [f.read_bytes() for f in files]
    assert sum(map(len, crops)) > BYTES_CHUNK
    store = SlideStore.open(write_slide_store(tmp_path / "big.zarr", "big", crops, [f.name for f in files]))
    assert len(list((store.path / "crops" / "bytes" / "c").iterdir())) == 2  # hundreds of crops per chunk
    batches = [store.read_crops(a, min(a + 256, store.n_cells)) for a in range(0, store.n_cells, 256)]
    assert [c for b in batches for c in b] == crops
    generic = SlideStore.open(store.path)
    generic._direct = None  # zarr's own read path must agree with the fast one
    assert generic.read_crops(200, 320) == crops[200:320]


def test_png_and_tiff_crops_are_kept_as_given(tmp_path, jpegs):
    from PIL import Image

    image = Image.open(jpegs[0]).convert("RGB")
    encoded = {}
    for fmt in ("PNG", "TIFF"):
        buf = io.BytesIO()
        image.save(buf, format=fmt)
        encoded[fmt] = buf.getvalue()
    crops = [jpegs[0].read_bytes(), encoded["PNG"], encoded["TIFF"]]
    store = SlideStore.open(write_slide_store(tmp_path / "mixed.zarr", "mixed", crops, ["a.jpg", "b.png", "c.tif"]))
    assert store.read_crops(0, 3) == crops
    assert store.formats().tolist() == [FORMAT_CODES[k] for k in ("jpeg", "png", "tiff")]
    for data in store.read_crops(1, 3):  # lossless formats decode back to the same pixels
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(image))


def test_unlabelled_store_and_corrupt_crop_are_stored(tmp_path, jpegs):
    truncated = jpegs[0].read_bytes()[:500]  # valid JPEG magic, broken body: stored, the engine flags it
    store = SlideStore.open(write_slide_store(tmp_path / "u.zarr", "u", [truncated, b"", b"junk"], ["t", "e", "j"]))
    assert store.read_crops(0, 3) == [truncated, b"", b"junk"]
    assert store.labels() == [None, None, None] and store.label_names == []
    assert store.formats().tolist() == [1, 0, 0]
    with pytest.raises(IndexError, match="outside"):
        store.read_crops(2, 4)


def test_content_hash_tracks_content_not_write_time(tmp_path, jpegs):
    crops, sources = [f.read_bytes() for f in jpegs[:6]], [f.name for f in jpegs[:6]]
    first = SlideStore.open(write_slide_store(tmp_path / "h.zarr", "h", crops, sources)).content_hash()
    again = SlideStore.open(write_slide_store(tmp_path / "h.zarr", "h", crops, sources)).content_hash()
    relabelled = SlideStore.open(write_slide_store(tmp_path / "h.zarr", "h", crops, sources,
                                                   labels=["x"] * 6)).content_hash()
    swapped = SlideStore.open(write_slide_store(tmp_path / "h.zarr", "h", crops[::-1], sources)).content_hash()
    assert first == again and len({first, relabelled, swapped}) == 3


# -- atomic writes ----------------------------------------------------------------------------

def test_write_leaves_no_partial_and_replaces_only_when_complete(tmp_path, jpegs):
    crops, sources = [f.read_bytes() for f in jpegs[:4]], [f.name for f in jpegs[:4]]
    path = write_slide_store(tmp_path / "s.zarr", "s", crops, sources)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]

    def failing():
        yield crops[0]
        raise OSError("disk gone mid-write")

    with pytest.raises(OSError, match="disk gone"):
        write_slide_store(path, "s", failing(), sources)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]  # no .partial, old store intact
    assert SlideStore.open(path).read_crops(0, 4) == crops

    with pytest.raises(OSError):
        write_slide_store(tmp_path / "new.zarr", "new", failing(), sources)
    assert not (tmp_path / "new.zarr").exists() and not (tmp_path / "new.zarr.partial").exists()

    write_slide_store(path, "s", crops[:2], sources[:2])  # a complete rewrite replaces it
    assert SlideStore.open(path).n_cells == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


@pytest.mark.parametrize("slide_id", ["../evil", "a b", "", ".hidden", "x/y"])
def test_unsafe_slide_id_is_refused_by_name(tmp_path, slide_id):
    with pytest.raises(SlideStoreError, match="is not a safe name") as err:
        write_slide_store(tmp_path / "s.zarr", slide_id, [b"\xff\xd8\xff"], ["a"])
    assert repr(slide_id) in str(err.value)
    assert not any(tmp_path.iterdir())


def test_mismatched_lengths_are_refused(tmp_path):
    with pytest.raises(SlideStoreError, match="2 crops for 1 sources"):
        write_slide_store(tmp_path / "s.zarr", "s", [b"a", b"b"], ["a"])
    with pytest.raises(SlideStoreError, match="more crops than the 1 sources"):
        write_slide_store(tmp_path / "s.zarr", "s", iter([b"a", b"b"]), ["a"])
    assert not any(tmp_path.iterdir())


# -- validation -------------------------------------------------------------------------------

def _decreasing_offsets(path):
    offsets = SlideStore.open(path)._offsets.copy()
    offsets[5], offsets[6] = offsets[6], offsets[5]
    _overwrite(path, "crops/offsets", offsets)


def _offsets_past_end(path):
    offsets = SlideStore.open(path)._offsets.copy()
    offsets[-1] += 10
    _overwrite(path, "crops/offsets", offsets)


CORRUPTIONS = {
    "missing zarr.json": (lambda p: (p / "zarr.json").unlink(), "missing zarr.json"),
    "wrong marker": (lambda p: _set_attr(p, format="someone-else"), "not a bmengine slide store"),
    "newer version": (lambda p: _set_attr(p, format_version=2), "format_version 2 is newer"),
    "deleted array": (lambda p: shutil.rmtree(p / "cells" / "label"), "array 'cells/label' is missing"),
    "decreasing offsets": (_decreasing_offsets, "'crops/offsets' decreases at cell 5"),
    "offsets past the bytes": (_offsets_past_end, "'crops/offsets' ends at"),
    "n_cells mismatch": (lambda p: _set_attr(p, n_cells=25), "'cells/label' has 24 entries but n_cells is 25"),
    "label out of range": (lambda p: _set_attr(p, label_names=["only"]), "'cells/label' of cell 1 is 1, outside -1..0"),
    "unsafe slide id": (lambda p: _set_attr(p, slide_id="../x"), "slide_id '../x' is not a safe name"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_malformed_store_names_path_and_problem(store_path, corruption):
    corrupt, problem = CORRUPTIONS[corruption]
    corrupt(store_path)
    with pytest.raises(SlideStoreError) as err:
        SlideStore.open(store_path)
    assert str(store_path) in str(err.value)
    assert problem in str(err.value)


def test_changed_crop_bytes_fail_verify(store_path):
    chunk = store_path / "crops" / "bytes" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.raises(SlideStoreError, match="do not match crops_sha256"):
        SlideStore.open(store_path).verify()


# -- finding stores ---------------------------------------------------------------------------

def test_find_slide_stores_lists_every_zarr_and_open_reports_the_stranger(tmp_path, store_path):
    shutil.copytree(store_path, tmp_path / "A-first.zarr")
    (tmp_path / "plain.zarr").mkdir()
    (tmp_path / "notes.txt").write_text("not a store")
    found = find_slide_stores(tmp_path)
    assert [p.name for p in found] == ["A-first.zarr", "P01-A.zarr", "plain.zarr"]
    with pytest.raises(SlideStoreError, match="missing zarr.json"):
        SlideStore.open(tmp_path / "plain.zarr")


def test_find_slide_stores_explains_missing_or_empty_folders(tmp_path):
    with pytest.raises(SlideStoreError, match="does not exist"):
        find_slide_stores(tmp_path / "nowhere")
    with pytest.raises(SlideStoreError, match=r"no slide stores \(\*\.zarr\)"):
        find_slide_stores(tmp_path)


def test_attrs_are_plain_json(store_path):
    raw = json.loads((store_path / "zarr.json").read_text())["attributes"][ATTRS_KEY]
    assert raw["n_cells"] == 24 and raw["slide_id"] == "P01-A"
    assert set(raw) >= {"format", "format_version", "slide_id", "patient_id", "n_cells", "label_names",
                        "crops_sha256", "created_by", "created_at", "provenance"}
