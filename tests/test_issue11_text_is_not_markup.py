"""Issue 11, item 5: text from data was read as Rich markup.

Seen: a slide id containing ``[/]`` set in a store's zarr.json killed the whole run (no
differential, report or run.json, even for the good slides); a manifest path with ``[/]`` crashed
ingest; ``[gpu]`` vanished from messages.
"""

from __future__ import annotations

import json

from bmengine.engine.model.card import card_path_for, sha256_of
from bmengine.engine.store.slide_store import ATTRS_KEY
from cli_helpers import bmengine, crop_folder, ingest
from conftest import pbc_files, write_manifest


def test_a_slide_id_with_markup_fails_only_its_slide(tmp_path, tiny_model):
    slides = tmp_path / "slides"
    ingest(crop_folder(tmp_path / "crops", {"good": {"neutrophil": 3}, "evil": {"monocyte": 3}}), slides)
    meta_path = slides / "evil.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"][ATTRS_KEY]["slide_id"] = "[/][bold red]x[/]"
    meta_path.write_text(json.dumps(meta))
    out = tmp_path / "out"
    result = bmengine("run", slides, "--model", tiny_model, "--out", out)
    assert result.returncode == 1, result.stderr
    assert "[/][bold red]x[/]" in result.stderr  # shown literally, not interpreted
    assert "MarkupError" not in result.stderr
    for name in ("differential.csv", "report.html", "run.json"):
        assert (out / name).is_file(), name
    statuses = {s["store"].rsplit("/", 1)[-1]: s["status"] for s in json.loads((out / "run.json").read_text())["slides"]}
    assert statuses == {"evil.zarr": "failed", "good.zarr": "ok"}


def test_a_manifest_path_with_markup_is_named_literally(tmp_path):
    (tmp_path / "crops[").mkdir()  # so that "crops[/]cell.jpg" is a real path holding "[/]"
    (tmp_path / "crops[" / "]cell.jpg").write_bytes(pbc_files("lymphocyte", 1)[0].read_bytes())
    manifest = write_manifest(tmp_path / "m.csv", [
        {"path": "crops[/]cell.jpg", "slide_id": "S1"},
        {"path": "crops[/][red]missing[/red].jpg", "slide_id": "S1"},
    ])
    result = bmengine("ingest", "--manifest", manifest, "--out", tmp_path / "slides")
    assert result.returncode == 1, result.stderr
    assert "crops[/][red]missing[/red].jpg: file not found" in result.stdout
    assert (tmp_path / "slides" / "S1.zarr").is_dir()


def test_bracketed_extras_stay_in_messages_and_help(tmp_path, tiny_model):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not really a TensorRT engine")
    card = json.loads(card_path_for(tiny_model).read_text())
    card.update(weights_file=plan.name, weights_sha256=sha256_of(plan))
    card_path_for(plan).write_text(json.dumps(card))
    slides = tmp_path / "slides"
    ingest(crop_folder(tmp_path / "crops", {"S": {"basophil": 1}}), slides)
    result = bmengine("run", slides, "--model", plan, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "[gpu]" in result.stderr, result.stderr
    doctor = " ".join(bmengine("doctor").stdout.split())
    assert "[gpu] extra" in doctor and "[train] extra" in doctor
