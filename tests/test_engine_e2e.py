"""End to end on real JPEGs: ingest -> run -> outputs, resume after a hard kill, bad crops and slides.

Everything is real: crops from ../shared/data, Zarr stores written by `bmengine ingest`, a Dask
cluster on localhost, the DALI CPU pipeline, and an ONNX model trained and exported by the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy.stats import beta

from bmengine.engine.model import sha256_of
from cli_helpers import KILL_AFTER
from conftest import BM, BMENGINE, pbc_files, write_manifest

SLIDES = {
    "S1": {"neutrophil": 10, "lymphocyte": 10, "platelet": 5},
    "S2": {"eosinophil": 12, "monocyte": 8},
    "S3": {"ig": 10, "basophil": 6, "erythroblast": 6},
}
GARBLED = BM / "NGS" / "NGS_18642.jpg"  # a known-bad Matek crop: decodes, but is garbled


def _bmengine(*args, env=None, check=False):
    full_env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(BMENGINE + [str(a) for a in args], capture_output=True, text=True, env=full_env,
                          check=check)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Three slides ingested from a manifest; S2 also holds a truncated JPEG and a garbled crop."""
    root = tmp_path_factory.mktemp("e2e")
    crops = root / "crops"
    crops.mkdir()
    rows = []
    for slide, mix in SLIDES.items():
        for cls, n in mix.items():
            for f in pbc_files(cls, n, offset=100):
                rows.append({"path": str(f), "slide_id": slide, "label": cls})
    truncated = crops / "truncated.jpg"
    truncated.write_bytes(pbc_files("eosinophil", 1)[0].read_bytes()[:4000])
    shutil.copy(GARBLED, crops / "garbled.jpg")
    rows.insert(5, {"path": "crops/truncated.jpg", "slide_id": "S2", "label": "eosinophil"})  # relative path
    rows.append({"path": "crops/garbled.jpg", "slide_id": "S2", "label": ""})
    manifest = write_manifest(root / "manifest.csv", rows)
    result = _bmengine("ingest", "--manifest", manifest, "--out", root / "slides")
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "slides"


@pytest.fixture(scope="module")
def reference(slides, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    result = _bmengine("run", slides, "--model", tiny_model, "--out", out, "--batch-size", "16")
    return out, result


def _cells(out, slide):
    return pd.read_parquet(out / slide / "cells.parquet")


def test_every_crop_has_a_row_and_counts_add_up(reference):
    out, result = reference
    assert result.returncode == 3, result.stderr  # 3: all slides done, some crops unreadable
    table = pd.read_csv(out / "differential.csv", dtype={"slide_id": str}).set_index("slide_id")
    assert sorted(table.index) == ["S1", "S2", "S3"]
    classes = [c.removeprefix("count_") for c in table.columns if c.startswith("count_")]
    assert len(classes) == 8
    for slide, mix in SLIDES.items():
        cells = _cells(out, slide)
        expected_crops = sum(mix.values()) + (2 if slide == "S2" else 0)
        assert len(cells) == expected_crops and cells["cell_index"].tolist() == list(range(expected_crops))
        row = table.loc[slide]
        assert row["n_crops"] == expected_crops
        assert row["n_cells"] + row["n_errors"] + row["n_flagged"] == row["n_crops"]
        assert sum(row[f"count_{c}"] for c in classes) == row["n_cells"]
        counted = cells[cells["error"].isna() & (cells["qc_flags"] == "")]
        assert counted["predicted"].value_counts().reindex(classes, fill_value=0).tolist() == [
            row[f"count_{c}"] for c in classes]
        base = sum(row[f"count_{c}"] for c in classes if c not in ("erythroblast", "platelet"))
        assert row["n_base"] == base
        probs = counted[[f"prob_{c}" for c in classes]].to_numpy()
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
        assert sum(row[f"soft_{c}"] for c in classes) == pytest.approx(row["n_cells"], rel=1e-4)


def test_every_row_is_the_crop_at_its_cell_index(slides, reference, tiny_model):
    """Row i holds crop i: its source is the store's source at ``cell_index``, and its
    (log-)probabilities are those of that very crop's bytes classified on their own (batch of
    one, read straight from the store). A batch written to shifted or shuffled rows, or decoded into a
    buffer the next batch overwrote, gives some row another crop's probabilities."""
    from bmengine.engine.backends import load_backend
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec
    from bmengine.engine.store import SlideStore

    out, _ = reference
    backend = load_backend(tiny_model)
    pipeline = CropPipeline(PipelineSpec.from_preprocessing(backend.card.preprocessing, batch_size=1))
    classes = list(backend.card.classes)
    for slide in SLIDES:
        store = SlideStore.open(slides / f"{slide}.zarr")
        cells = _cells(out, slide)
        assert cells["source"].tolist() == [store.sources()[i] for i in cells["cell_index"]]
        got = _log(cells[[f"prob_{c}" for c in classes]].to_numpy())
        for row, index in enumerate(cells["cell_index"]):
            decoded = pipeline.decode(store.read_crops(index, index + 1))
            if not decoded.good:
                assert np.isnan(got[row]).all() and cells["error"].iloc[row], cells["source"].iloc[row]
                continue
            alone = _log(backend.infer(decoded.pixels).probs)[0]
            assert np.allclose(got[row], alone, atol=1e-3), f"{slide} row {row} is not crop {index}"
        ok = got[~np.isnan(got).any(axis=1)]
        apart = np.abs(ok[:, None, :] - ok[None, :, :]).max(axis=2) + np.eye(len(ok))
        assert apart.min() > 0.1  # no two crops alike: any swap of rows would show


def _log(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities: confident crops of one class differ in their small probabilities."""
    return np.log(np.maximum(probs, 1e-30))


def test_intervals_are_exact_clopper_pearson(reference):
    out, _ = reference
    row = pd.read_csv(out / "differential.csv", dtype={"slide_id": str}).set_index("slide_id").loc["S1"]
    n = row["n_base"]
    for cls in ("neutrophil", "lymphocyte", "monocyte", "eosinophil"):
        k = row[f"count_{cls}"]
        low = beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
        high = beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
        assert row[f"pct_{cls}"] == pytest.approx(100 * k / n)
        assert row[f"ci_low_{cls}"] == pytest.approx(100 * low, abs=1e-6)
        assert row[f"ci_high_{cls}"] == pytest.approx(100 * high, abs=1e-6)


def test_corrupt_jpeg_is_an_error_row_and_its_slide_goes_on(reference):
    out, _ = reference
    cells = _cells(out, "S2")
    bad = cells[cells["source"].str.endswith("truncated.jpg")]
    assert len(bad) == 1 and "JPEG truncated" in bad["error"].iloc[0]
    assert bad["predicted"].isna().all() and np.isnan(bad["confidence"].iloc[0])
    assert cells["error"].notna().sum() == 1 and cells["predicted"].notna().sum() == len(cells) - 1
    record = json.loads((out / "run.json").read_text())
    s2 = next(s for s in record["slides"] if s["slide_id"] == "S2")
    assert s2["status"] == "ok" and s2["n_errors"] == 1


def test_garbled_crop_is_flagged_and_not_counted(reference):
    out, _ = reference
    cells = _cells(out, "S2")
    flagged = cells[cells["qc_flags"] != ""]
    assert flagged["source"].str.endswith("garbled.jpg").tolist() == [True]
    row = pd.read_csv(out / "differential.csv", dtype={"slide_id": str}).set_index("slide_id").loc["S2"]
    assert row["n_flagged"] == 1 and row["n_cells"] == 20


def test_outputs_name_the_model_and_version(reference, tiny_model):
    out, _ = reference
    sha = sha256_of(tiny_model)
    record = json.loads((out / "run.json").read_text())
    assert record["model"]["sha256"] == sha and record["bmengine_version"] and record["model"]["device"] == "cpu"
    # an int8 model: which of ONNX Runtime's integer kernels computed it, by this CPU's VNNI
    from bmengine.engine.backends.x86_int8 import int8_dot_product

    vnni = int8_dot_product()
    expected = vnni if vnni in ("avx512_vnni", "avx_vnni") else "session.x64quantprecision=1"
    assert expected in record["model"]["int8_kernels"]
    assert record["crops_classified"] == 69 and record["crops_per_second"] > 0
    table = pd.read_parquet(out / "differential.parquet")
    assert set(table["model_sha256"]) == {sha}
    html = (out / "report.html").read_text()
    assert sha in html and all(s in html for s in SLIDES) and "data:image/svg+xml;base64," in html
    assert (out / "S1" / "histogram.svg").stat().st_size > 1000


def test_killed_run_resumes_to_the_same_result(slides, tiny_model, reference, tmp_path):
    ref_out, _ = reference
    out = tmp_path / "out"
    killed = subprocess.run(KILL_AFTER + ["40", "run", slides, "--model", tiny_model, "--out", out, "--batch-size", "16"],
                            capture_output=True, text=True)  # S1 has 25 crops: dies once it is written
    assert killed.returncode == -9
    # S1 is written; S3 (the last) is not: S2's marker is written behind inference, possibly not yet
    assert (out / "S1" / "slide.json").is_file() and not (out / "S3" / "slide.json").exists()
    assert not (out / "differential.csv").exists()
    resumed = _bmengine("run", slides, "--model", tiny_model, "--out", out, "--batch-size", "16")
    assert resumed.returncode == 3, resumed.stderr
    statuses = {s["slide_id"]: s["status"] for s in json.loads((out / "run.json").read_text())["slides"]}
    assert statuses["S1"] == "skipped" and statuses["S3"] == "ok" and statuses["S2"] in ("ok", "skipped")
    for slide in SLIDES:
        pd.testing.assert_frame_equal(_cells(out, slide), _cells(ref_out, slide))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "differential.parquet"),
                                  pd.read_parquet(ref_out / "differential.parquet"))
    assert not list(out.rglob("*.partial"))


def test_a_bad_slide_is_recorded_and_the_run_goes_on(slides, tiny_model, tmp_path):
    broken = tmp_path / "slides"
    shutil.copytree(slides, broken)
    shutil.rmtree(broken / "S3.zarr" / "crops" / "offsets")
    (broken / "notes.zarr").mkdir()  # not a slide store at all
    out = tmp_path / "out"
    result = _bmengine("run", broken, "--model", tiny_model, "--out", out, "--batch-size", "16")
    assert result.returncode == 1
    record = json.loads((out / "run.json").read_text())
    statuses = {s["slide_id"]: s for s in record["slides"]}
    assert statuses["S1"]["status"] == "ok" and statuses["S2"]["status"] == "ok"
    assert statuses["S3"]["status"] == "failed" and "S3.zarr" in statuses["S3"]["error"]
    assert "offsets" in statuses["S3"]["error"]
    assert statuses["notes"]["status"] == "failed"
    assert len(pd.read_csv(out / "differential.csv")) == 2
    assert "S3" in (out / "report.html").read_text()


def test_a_model_without_card_stops_before_any_work(slides, tiny_model, tmp_path):
    lone = tmp_path / "lone.onnx"
    shutil.copy(tiny_model, lone)
    result = _bmengine("run", slides, "--model", lone, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "no model card beside it" in result.stderr and "lone.onnx" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_slides_folder_is_a_clear_error(tiny_model, tmp_path):
    result = _bmengine("run", tmp_path / "nowhere", "--model", tiny_model, "--out", tmp_path / "out")
    assert result.returncode == 2 and "nowhere" in result.stderr


def test_run_equals_one_by_one_evaluation(slides, tmp_path):
    """Regression: decoding runs ahead of inference, so a batch must not share DALI's buffers
    (a view into them was overwritten by the next batch and scrambled the predictions). The
    shipped model is slow enough here for the decode thread to overtake inference."""
    from pathlib import Path

    from bmengine.engine.assets import DEFAULT_MODEL
    from bmengine.engine.evaluate import predict_files
    from bmengine.engine.pipeline.engine import Engine, EngineSpec

    result = _bmengine("run", slides, "--out", tmp_path, "--batch-size", "8")
    assert result.returncode == 3, result.stderr
    cells = _cells(tmp_path, "S1")
    expected, _ = predict_files(Engine.load(EngineSpec(DEFAULT_MODEL, batch_size=8)), [Path(s) for s in cells["source"]])
    got = cells[[c for c in cells.columns if c.startswith("prob_")]].to_numpy()
    assert np.allclose(got, expected, atol=1e-5)
