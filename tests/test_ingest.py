"""Ingest: real crops from folders or a manifest become slide stores; bad files are reported, never fatal."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bmengine.engine.cli.app import app
from bmengine.engine.store import SlideStore
from bmengine.engine.store.ingest import IngestError, ingest_folder, ingest_manifest

from conftest import PBC


def real_jpegs(cls: str, n: int) -> list[Path]:
    files = sorted((PBC / cls).glob("*.jpg"))[:n]
    assert len(files) == n, f"need {n} crops of {cls} in {PBC}"
    return files


def copy_into(folder: Path, files: list[Path]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
        out.append(folder / f.name)
    return out


@pytest.fixture
def crop_folder(tmp_path) -> Path:
    """Two clean slides (one with a nested sub-folder) and nothing else."""
    root = tmp_path / "crops"
    copy_into(root / "S1" / "region-2", real_jpegs("lymphocyte", 3))
    copy_into(root / "S1" / "region-1", real_jpegs("neutrophil", 2))
    copy_into(root / "S2", real_jpegs("monocyte", 4))
    return root


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# -- folder ---------------------------------------------------------------------------------

def test_folder_ingest_keeps_bytes_and_sorted_relative_sources(crop_folder, tmp_path):
    report = ingest_folder(crop_folder, tmp_path / "slides")
    assert report.problems == []
    assert [(s, p.name, n) for s, p, n in report.slides] == [("S1", "S1.zarr", 5), ("S2", "S2.zarr", 4)]
    store = SlideStore.open(tmp_path / "slides" / "S1.zarr")
    sources = store.sources()
    assert sources == sorted(sources) and sources[0].startswith("S1/region-1/")
    assert store.read_crops(0, 5) == [(crop_folder / s).read_bytes() for s in sources]
    assert store.labels() == [None] * 5 and store.patient_id is None
    assert store.provenance["ingested_from"] == "folder" and store.provenance["n_files_skipped"] == 0


def test_folder_problems_are_reported_and_other_files_land(crop_folder, tmp_path):
    (crop_folder / "S2" / "notes.txt").write_text("the smear was thick")
    (crop_folder / "S2" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")  # hidden: ignored, not a problem
    (crop_folder / "S2" / "cut.jpg").write_bytes(real_jpegs("monocyte", 5)[-1].read_bytes()[:700])
    (crop_folder / "stray.jpg").write_bytes(b"\xff\xd8\xff")
    copy_into(crop_folder / "bad name", real_jpegs("basophil", 1))
    (crop_folder / "EMPTY").mkdir()
    (crop_folder / "EMPTY" / "zero.png").write_bytes(b"")
    report = ingest_folder(crop_folder, tmp_path / "slides")
    reasons = {Path(f).name: r for f, r in report.problems}
    assert reasons["notes.txt"].startswith("not a JPEG, PNG or TIFF image")
    assert reasons["stray.jpg"] == "not inside a slide sub-folder; skipped"
    assert "not a safe slide id" in reasons["bad name"]
    assert reasons["zero.png"] == "empty file (0 bytes)" and reasons["EMPTY"].startswith("no usable crops")
    assert ".DS_Store" not in reasons
    assert {s: n for s, _, n in report.slides} == {"S1": 5, "S2": 5}  # the truncated JPEG is stored
    s2 = SlideStore.open(tmp_path / "slides" / "S2.zarr")
    assert "S2/cut.jpg" in s2.sources()
    assert s2.provenance["n_files_skipped"] == 1
    assert s2.provenance["skipped_files"][0]["file"].endswith("notes.txt")
    assert not (tmp_path / "slides" / "EMPTY.zarr").exists()


def test_existing_stores_are_kept_unless_overwrite(crop_folder, tmp_path):
    out = tmp_path / "slides"
    ingest_folder(crop_folder, out)
    (out / "unrelated.txt").write_text("keep me")
    copy_into(crop_folder / "S2", real_jpegs("eosinophil", 2))
    again = ingest_folder(crop_folder, out)
    assert again.slides == [] and [s for s, _ in again.existing] == ["S1", "S2"]
    assert SlideStore.open(out / "S2.zarr").n_cells == 4
    replaced = ingest_folder(crop_folder, out, overwrite=True)
    assert {s: n for s, _, n in replaced.slides} == {"S1": 5, "S2": 6}
    assert SlideStore.open(out / "S2.zarr").n_cells == 6
    assert sorted(p.name for p in out.iterdir()) == ["S1.zarr", "S2.zarr", "unrelated.txt"]


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(IngestError, match="does not exist"):
        ingest_folder(tmp_path / "nowhere", tmp_path / "slides")


# -- manifest -------------------------------------------------------------------------------

def test_manifest_relative_paths_labels_patients_and_bad_rows(tmp_path):
    lab = tmp_path / "lab"
    lym = copy_into(lab / "imgs", real_jpegs("lymphocyte", 2))
    eos = copy_into(tmp_path / "elsewhere", real_jpegs("eosinophil", 1))
    (lab / "imgs" / "readme.jpg").write_text("not an image at all")
    rows = [
        ["imgs/" + lym[0].name, "P7-bm", "lymphocyte", "P7"],
        [str(eos[0]), "P7-bm", "", ""],  # absolute path, unknown label
        ["imgs/missing.jpg", "P7-bm", "blast", "P7"],
        ["imgs/readme.jpg", "P8-pb", "monocyte", "P8"],
        ["imgs/" + lym[1].name, "P8-pb", "lymphocyte", "P8"],
        ["imgs/" + lym[1].name, "../escape", "x", ""],
        ["", "P8-pb", "x", ""],
        ["imgs/" + lym[1].name, "P8-pb", "x", "P9"],  # conflicting patient
    ]
    manifest = write_csv(lab / "manifest.csv", ["path", "slide_id", "label", "patient_id"], rows)
    report = ingest_manifest(manifest, tmp_path / "slides")
    assert {s: n for s, _, n in report.slides} == {"P7-bm": 2, "P8-pb": 1}
    p7 = SlideStore.open(tmp_path / "slides" / "P7-bm.zarr")
    assert p7.read_crops(0, 2) == [lym[0].read_bytes(), eos[0].read_bytes()]
    assert p7.labels() == ["lymphocyte", None] and p7.patient_id == "P7"
    assert p7.sources() == ["imgs/" + lym[0].name, str(eos[0])]
    assert p7.provenance["manifest"] == str(manifest.resolve())
    reasons = [r for _, r in report.problems]
    assert "file not found" in reasons and "empty path" in reasons
    assert any(r.startswith("not a JPEG, PNG or TIFF") for r in reasons)
    assert any("'../escape' is not a safe name" in r for r in reasons)
    assert any("patient_id 'P9' conflicts with 'P8'" in r for r in reasons)
    assert any(f == f"{manifest}:7" for f, _ in report.problems)  # bad rows are named by line


def test_manifest_without_required_columns_writes_nothing(tmp_path):
    manifest = write_csv(tmp_path / "m.csv", ["file", "label"], [["a.jpg", "x"]])
    with pytest.raises(IngestError) as err:
        ingest_manifest(manifest, tmp_path / "slides")
    assert str(manifest) in str(err.value) and "path, slide_id" in str(err.value)
    assert not (tmp_path / "slides").exists()


# -- CLI ------------------------------------------------------------------------------------

def invoke(*args: str):
    return CliRunner().invoke(app, ["ingest", *args])


def test_cli_folder_clean_exit_0_and_problems_exit_1(crop_folder, tmp_path):
    out = tmp_path / "slides"
    result = invoke(str(crop_folder), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "S1" in result.output and "9" in result.output
    (crop_folder / "S3").mkdir()
    (crop_folder / "S3" / "x.jpg").write_text("text")
    result = invoke(str(crop_folder), "--out", str(out))
    assert result.exit_code == 1 and "not a JPEG" in result.output
    assert "exists" in result.output


def test_cli_manifest_and_usage_errors(tmp_path):
    lym = copy_into(tmp_path / "imgs", real_jpegs("lymphocyte", 2))
    manifest = write_csv(tmp_path / "m.csv", ["path", "slide_id"], [[f"imgs/{f.name}", "S9"] for f in lym])
    out = tmp_path / "slides"
    assert invoke("--manifest", str(manifest), "--out", str(out)).exit_code == 0
    assert SlideStore.open(out / "S9.zarr").n_cells == 2
    assert invoke("--out", str(out)).exit_code == 2  # neither
    assert invoke(str(tmp_path), "--manifest", str(manifest), "--out", str(out)).exit_code == 2  # both
    bad = write_csv(tmp_path / "bad.csv", ["path"], [["imgs/a.jpg"]])
    result = invoke("--manifest", str(bad), "--out", str(out))
    assert result.exit_code == 2 and "slide_id" in result.output
