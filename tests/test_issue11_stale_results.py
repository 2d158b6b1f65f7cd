"""Issue 11, item 3 (and issue 14, item 8): re-runs must not keep stale answers.

Seen: the resume key was the model sha256 plus a store hash. A store repaired and re-ingested kept
its old error rows ("already done"); an edited card silently changed every prediction, and
restoring it did not redo the slide. The key now covers crop bytes, weights, the whole card, the
engine's results version and the input limits; each test changes one of them and expects a redo.
"""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from bmengine.engine.model.card import card_path_for, sha256_of
from bmengine.engine.store import SlideStore
from cli_helpers import bmengine, crop_folder, ingest

SLIDES = {"A": {"lymphocyte": 3, "neutrophil": 3}, "B": {"monocyte": 4}}


def _statuses(out) -> dict[str, str]:
    return {s["slide_id"]: s["status"] for s in json.loads((out / "run.json").read_text())["slides"]}


def _run(slides, model, out):
    result = bmengine("run", slides, "--model", model, "--out", out, "--batch-size", "8")
    assert result.returncode in (0, 3), result.stderr
    return result


def _first_run(root, tiny_model) -> tuple:
    """Crops, their stores, a model and the finished run over them, under ``root``."""
    crops = crop_folder(root / "crops", SLIDES)
    ingest(crops, root / "slides")
    model_dir = root / "model"
    model_dir.mkdir()
    for path in (tiny_model, card_path_for(tiny_model)):
        shutil.copy(path, model_dir / path.name)
    model = model_dir / tiny_model.name
    _run(root / "slides", model, root / "out")
    assert _statuses(root / "out") == {"A": "ok", "B": "ok"}
    return crops, root / "slides", model, root / "out"


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_model):
    """Built once for this file."""
    root = tmp_path_factory.mktemp("archive")
    _first_run(root, tiny_model)
    return root


@pytest.fixture()
def archive(first_run, tmp_path, tiny_model):
    """A copy of the first run's whole folder (crops, stores, model, outputs) for one test to change:
    an archive moved to another disk resumes as it would in place."""
    root = tmp_path / "archive"
    shutil.copytree(first_run, root)
    return root / "crops", root / "slides", root / "model" / tiny_model.name, root / "out"


@pytest.fixture()
def archive_ingested_here(tmp_path, tiny_model):
    """For tests that ingest again: a store records where its crops came from, so stores re-ingested
    from a copy of the crops are other stores (and rightly redone)."""
    return _first_run(tmp_path, tiny_model)


def test_unchanged_inputs_are_skipped(archive):
    _, slides, model, out = archive
    _run(slides, model, out)
    assert _statuses(out) == {"A": "skipped", "B": "skipped"}


def test_repaired_and_reingested_store_is_redone(archive_ingested_here):
    """The case seen: a store damaged on disk gave error rows; re-ingesting the same crops repaired it,
    but the store hash (which never reads crop bytes) was unchanged, so the old rows stayed."""
    crops, slides, model, _ = archive_ingested_here
    out = slides.parent / "out-damaged"
    chunk = slides / "A.zarr" / "crops" / "bytes" / "c" / "0"
    data = bytearray(chunk.read_bytes())
    data[3000:3400] = bytes(400)  # a bad sector inside the first crop
    chunk.write_bytes(bytes(data))
    _run(slides, model, out)
    damaged = pd.read_parquet(out / "A" / "cells.parquet")
    assert damaged["error"].notna().sum() == 1 and damaged["error"].dropna().str.startswith("store damaged").all()
    ingest(crops, slides, "--overwrite")  # the same source files: the same crops, the same store hash
    result = _run(slides, model, out)
    assert _statuses(out) == {"A": "ok", "B": "skipped"}
    assert pd.read_parquet(out / "A" / "cells.parquet")["error"].isna().all()
    assert "redone: its store was damaged last time" in result.stderr
    assert SlideStore.open(slides / "A.zarr").content_hash() == json.loads(
        (out / "A" / "slide.json").read_text())["resume"]["store_hash"]


def test_a_store_reingested_with_other_crops_is_redone(archive_ingested_here):
    crops, slides, model, out = archive_ingested_here
    victim = sorted((crops / "A").glob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:5000])  # truncated at the lab: an error row
    ingest(crops, slides, "--overwrite")
    result = _run(slides, model, out)
    assert _statuses(out) == {"A": "ok", "B": "skipped"}
    assert pd.read_parquet(out / "A" / "cells.parquet")["error"].notna().sum() == 1
    assert "redone: changed since: the slide store" in result.stderr


def test_edited_card_redoes_and_restoring_it_redoes_again(archive):
    _, slides, model, out = archive
    card_file = card_path_for(model)
    original = card_file.read_text()
    card = json.loads(original)
    card["preprocessing"]["mean"] = [0.6, 0.5, 0.4]
    card_file.write_text(json.dumps(card))
    result = _run(slides, model, out)
    assert _statuses(out) == {"A": "ok", "B": "ok"}
    assert "the model card" in result.stderr
    edited = pd.read_parquet(out / "A" / "cells.parquet")
    card_file.write_text(original)
    _run(slides, model, out)
    assert _statuses(out) == {"A": "ok", "B": "ok"}
    restored = pd.read_parquet(out / "A" / "cells.parquet")
    assert not edited["prob_lymphocyte"].equals(restored["prob_lymphocyte"])
    card_file.write_text(json.dumps(json.loads(original), indent=4))  # same card, other layout
    _run(slides, model, out)
    assert _statuses(out) == {"A": "skipped", "B": "skipped"}


def test_another_model_redoes_every_slide(archive, tiny_model):
    _, slides, model, out = archive
    fp32 = tiny_model.with_name(tiny_model.name.replace("_int8", ""))
    result = _run(slides, fp32, out)
    assert _statuses(out) == {"A": "ok", "B": "ok"}
    assert "the model weights" in result.stderr
    marker = json.loads((out / "A" / "slide.json").read_text())
    assert marker["resume"]["model_sha256"] == sha256_of(fp32)


def test_a_marker_without_its_cells_table_is_redone(archive):
    _, slides, model, out = archive
    (out / "B" / "cells.parquet").unlink()
    result = _run(slides, model, out)
    assert _statuses(out) == {"A": "skipped", "B": "ok"}
    assert "cells.parquet is missing" in result.stderr
    assert (out / "B" / "cells.parquet").is_file()


def test_other_input_limits_redo_the_slides(archive):
    _, slides, model, out = archive
    bmengine("run", slides, "--model", model, "--out", out, "--max-crop-pixels", "100000")
    assert _statuses(out) == {"A": "ok", "B": "ok"}
    assert pd.read_parquet(out / "A" / "cells.parquet")["error"].notna().all()


def test_a_slide_that_failed_is_retried(archive):
    _, slides, model, out = archive
    marker = out / "B" / "slide.json"
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "status": "failed"}))
    _run(slides, model, out)
    assert _statuses(out) == {"A": "skipped", "B": "ok"}


def test_the_shipped_sample_stores_resume_with_the_shipped_model(tmp_path):
    """The demo's stores (rebuilt with per-crop checksums) and the default model: a second run skips."""
    from bmengine.engine.assets import SAMPLE_SLIDES

    slides = tmp_path / "slides"
    shutil.copytree(SAMPLE_SLIDES / "patient-01-normal.zarr", slides / "patient-01-normal.zarr")
    for _ in range(2):
        result = bmengine("run", slides, "--out", tmp_path / "out")
        assert result.returncode == 0, result.stderr
    assert _statuses(tmp_path / "out") == {"patient-01-normal": "skipped"}
