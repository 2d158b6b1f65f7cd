"""Issue 11, item 7 (and issue 14, item 8): double counting and misleading status.

Seen: a manifest listing the same file twice for one slide counted that cell twice; two stores
with the same slide id marked both report rows "failed"; ids differing only in case were not
warned about (on a case-insensitive disk they collide).
"""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd

from bmengine.engine.store import SlideStore
from bmengine.engine.store.slide_store import ATTRS_KEY
from cli_helpers import bmengine, crop_folder, ingest
from conftest import pbc_files, write_manifest


def test_a_file_listed_twice_for_one_slide_is_stored_once_with_a_warning(tmp_path):
    crops = pbc_files("neutrophil", 3)
    rows = [{"path": str(f), "slide_id": "S1"} for f in crops] + [{"path": str(crops[1]), "slide_id": "S1"}]
    rows.append({"path": str(crops[1]), "slide_id": "S2"})  # another slide may hold it (its own count)
    result = bmengine("ingest", "--manifest", write_manifest(tmp_path / "m.csv", rows), "--out", tmp_path / "slides")
    assert result.returncode == 0, result.stderr
    assert SlideStore.open(tmp_path / "slides" / "S1.zarr").n_cells == 3
    assert SlideStore.open(tmp_path / "slides" / "S2.zarr").n_cells == 1
    assert "warning" in result.stdout and "stored once" in result.stdout and crops[1].name in result.stdout


def test_a_link_to_a_crop_of_the_same_slide_is_one_cell(tmp_path):
    crops = crop_folder(tmp_path / "crops", {"S1": {"monocyte": 2}})
    first = sorted((crops / "S1").iterdir())[0]
    (crops / "S1" / "again.jpg").symlink_to(first)
    result = ingest(crops, tmp_path / "slides")
    assert SlideStore.open(tmp_path / "slides" / "S1.zarr").n_cells == 2
    assert "stored once" in result.stdout


def test_two_stores_with_one_slide_id_the_first_runs_and_only_the_second_fails(tmp_path, tiny_model):
    slides = tmp_path / "slides"
    ingest(crop_folder(tmp_path / "crops", {"P1": {"lymphocyte": 3}, "P2": {"platelet": 2}}), slides)
    shutil.copytree(slides / "P1.zarr", slides / "P1-copy.zarr")
    out = tmp_path / "out"
    result = bmengine("run", slides, "--model", tiny_model, "--out", out)
    assert result.returncode == 1
    statuses = [(s["store"].rsplit("/", 1)[-1], s["status"]) for s in json.loads((out / "run.json").read_text())["slides"]]
    assert statuses == [("P1-copy.zarr", "ok"), ("P1.zarr", "failed"), ("P2.zarr", "ok")]
    assert len(pd.read_csv(out / "differential.csv")) == 2
    report = (out / "report.html").read_text()
    summary = report[report.index("<h2>Slides</h2>") : report.index("</table>", report.index("<h2>Slides</h2>"))]
    p1_rows = re.findall(r"<tr><td class='text'>(?:<a [^>]*>)?P1(?:</a>)?</td>.*?</tr>", summary)
    assert len(p1_rows) == 2
    assert "status-ok" in p1_rows[0] and "status-failed" in p1_rows[1]


def test_ids_that_differ_only_in_case_are_warned_at_ingest_and_run(tmp_path, tiny_model):
    crops = crop_folder(tmp_path / "crops", {"Pat1": {"basophil": 1}, "pat1": {"eosinophil": 1}})
    result = ingest(crops, tmp_path / "slides")
    assert "differ only in case" in result.stdout
    out = tmp_path / "out"
    result = bmengine("run", tmp_path / "slides", "--model", tiny_model, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "differ only in case" in result.stderr
    record = json.loads((out / "run.json").read_text())
    assert any("differ only in case" in w for w in record["warnings"])
    assert "differ only in case" in (out / "report.html").read_text()
    meta = json.loads((tmp_path / "slides" / "Pat1.zarr" / "zarr.json").read_text())
    assert meta["attributes"][ATTRS_KEY]["slide_id"] == "Pat1"
