"""Per-slide differential rows: counts add up, percentages and intervals match hand values, files round-trip."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from bmengine.engine.outputs import differential
from bmengine.engine.outputs.differential import (
    differential_table,
    read_metadata,
    summarize_slide,
    write_differential,
)
from bmengine.engine.outputs.stats import clopper_pearson, per_base_interval
from bmengine.engine.taxonomy import get_taxonomy

PBC = get_taxonomy("pbc-blood-8")
MATEK = get_taxonomy("matek-bone-marrow-21")


def make_cells(taxonomy, n: int = 300, *, seed: int = 0, n_errors: int = 0, n_flagged: int = 0,
               labels: bool = True, predicted: list[str] | None = None) -> pd.DataFrame:
    """A cells table shaped like the engine's: softmax-like probabilities, argmax predictions,
    error rows with NaN probabilities, QC-flagged rows, and (optionally) noisy labels."""
    rng = np.random.default_rng(seed)
    classes = np.array(taxonomy.classes, dtype=object)
    if predicted is None:
        probs = rng.dirichlet(np.full(len(classes), 0.3), size=n).astype(np.float32)
        pred = classes[probs.argmax(axis=1)]
    else:
        n = len(predicted)
        pred = np.array(predicted, dtype=object)
        idx = np.array([taxonomy.index(c) for c in predicted])
        probs = np.full((n, len(classes)), 0.2 / (len(classes) - 1), dtype=np.float32)
        probs[np.arange(n), idx] = 0.8
    truth = pred.copy()
    noisy = rng.random(n) < 0.2
    truth[noisy] = classes[rng.integers(0, len(classes), noisy.sum())]
    table = pd.DataFrame({
        "cell_index": np.arange(n, dtype=np.int64),
        "source": [f"crop_{i:05d}.jpg" for i in range(n)],
        "label": truth if labels else [None] * n,
        "predicted": pred,
        "confidence": probs.max(axis=1),
    })
    for i, c in enumerate(classes):
        table[f"prob_{c}"] = probs[:, i]
    table["error"] = pd.Series([None] * n, dtype=object)
    table["qc_flags"] = ""
    bad = rng.choice(n, size=n_errors + n_flagged, replace=False)
    errors, flagged = bad[:n_errors], bad[n_errors:]
    table.loc[errors, "predicted"] = None
    table.loc[errors, "error"] = "DecodeError: truncated JPEG"
    table.loc[errors, [f"prob_{c}" for c in classes] + ["confidence"]] = np.nan
    table.loc[flagged, "qc_flags"] = ["blurry" if i % 2 else "blurry;dark" for i in range(len(flagged))]
    return table


@pytest.mark.parametrize("taxonomy", [PBC, MATEK], ids=lambda t: t.name)
def test_counts_add_up(taxonomy):
    cells = make_cells(taxonomy, 300, n_errors=7, n_flagged=11)
    row = summarize_slide("slide-1", cells, taxonomy, patient_id="P1")
    assert (row["slide_id"], row["patient_id"], row["taxonomy"]) == ("slide-1", "P1", taxonomy.name)
    assert (row["n_crops"], row["n_errors"], row["n_flagged"], row["n_cells"]) == (300, 7, 11, 282)
    assert row["n_cells"] + row["n_errors"] + row["n_flagged"] == row["n_crops"]
    assert sum(row[f"count_{c}"] for c in taxonomy.classes) == row["n_cells"]
    assert row["n_base"] == sum(row[f"count_{c}"] for c in taxonomy.counted)
    assert sum(row[f"pct_{c}"] for c in taxonomy.counted) == pytest.approx(100.0)
    counted = cells[cells["error"].isna() & (cells["qc_flags"] == "")]
    assert row["count_" + taxonomy.classes[0]] == int((counted["predicted"] == taxonomy.classes[0]).sum())
    for c in taxonomy.classes:
        assert row[f"ci_low_{c}"] <= row[f"pct_{c}"] <= row[f"ci_high_{c}"]


@pytest.mark.parametrize("taxonomy", [PBC, MATEK], ids=lambda t: t.name)
def test_soft_histogram_sums_to_counted_cells(taxonomy):
    cells = make_cells(taxonomy, 300, n_errors=5, n_flagged=5)
    row = summarize_slide("s", cells, taxonomy)
    assert sum(row[f"soft_{c}"] for c in taxonomy.classes) == pytest.approx(row["n_cells"], rel=1e-5)
    assert sum(row[f"soft_pct_{c}"] for c in taxonomy.counted) == pytest.approx(100.0)
    counted = cells[cells["error"].isna() & (cells["qc_flags"] == "")]
    assert row["soft_BLA" if taxonomy is MATEK else "soft_ig"] == pytest.approx(
        float(counted["prob_BLA" if taxonomy is MATEK else "prob_ig"].sum()), rel=1e-6)


def _matek_example() -> dict[str, int]:
    return {"NGS": 60, "NGB": 10, "MYB": 20, "PMO": 10, "EOS": 5, "EBO": 30, "PEB": 10, "BLA": 15, "LYT": 30,
            "PLM": 5, "MON": 10, "ART": 6, "KSC": 4}


def test_matek_hand_example_me_ratio_and_blasts():
    counts = _matek_example()
    cells = make_cells(MATEK, predicted=[c for c, k in counts.items() for _ in range(k)])
    row = summarize_slide("bm-1", cells, MATEK)
    base = 60 + 10 + 20 + 10 + 5 + 30 + 10 + 15 + 30 + 5 + 10  # everything but ART/KSC/NIF = 205
    assert row["n_cells"] == base + 10 and row["n_base"] == base == 205
    assert row["me_ratio"] == pytest.approx((60 + 10 + 20 + 10 + 5) / (30 + 10))  # 2.625
    assert row["blast_pct"] == pytest.approx(100 * 15 / 205)  # 7.32
    assert row["pct_BLA"] == row["blast_pct"]
    low, high = clopper_pearson(15, 205)
    assert (row["blast_pct_ci_low"], row["blast_pct_ci_high"]) == pytest.approx((100 * low, 100 * high))
    assert 4.1 < row["blast_pct_ci_low"] < 4.2 and 11.7 < row["blast_pct_ci_high"] < 11.9
    assert row["erythroid_pct"] == pytest.approx(100 * 40 / 205)
    assert row["lymphoid_pct"] == pytest.approx(100 * 35 / 205)
    assert row["plasma_cell_pct"] == pytest.approx(100 * 5 / 205)
    assert row["count_NIF"] == 0 and row["pct_NIF"] == 0.0 and row["ci_low_NIF"] == 0.0
    # artefacts are outside the base: 6 per 205 base cells, with the per-base interval
    assert row["pct_ART"] == pytest.approx(100 * 6 / 205)
    low, high = per_base_interval(6, 205)
    assert (row["ci_low_ART"], row["ci_high_ART"]) == pytest.approx((100 * low, 100 * high))
    assert "me_ratio_ci_low" not in row  # a ratio is not a proportion


def test_pbc_nrbc_per_100_leukocytes_and_nlr():
    counts = {"neutrophil": 120, "lymphocyte": 60, "monocyte": 12, "eosinophil": 6, "basophil": 2,
              "erythroblast": 16, "platelet": 9}
    cells = make_cells(PBC, predicted=[c for c, k in counts.items() for _ in range(k)])
    row = summarize_slide("pb-1", cells, PBC)
    assert row["n_base"] == 200 and row["n_cells"] == 225
    assert row["nlr"] == pytest.approx(2.0)
    assert row["ig_pct"] == 0.0 and row["ig_pct_ci_low"] == 0.0
    assert row["ig_pct_ci_high"] == pytest.approx(100 * (1 - 0.025 ** (1 / 200)))
    assert row["nrbc_per_100_wbc"] == pytest.approx(8.0) == row["pct_erythroblast"]
    low, high = per_base_interval(16, 200)
    assert (row["nrbc_per_100_wbc_ci_low"], row["nrbc_per_100_wbc_ci_high"]) == pytest.approx((100 * low, 100 * high))
    assert row["pct_neutrophil"] == 60.0
    low, high = clopper_pearson(120, 200)
    assert (row["ci_low_neutrophil"], row["ci_high_neutrophil"]) == pytest.approx((100 * low, 100 * high))


def test_errors_flags_and_predictionless_rows_are_not_counted():
    cells = make_cells(PBC, 50)
    cells.loc[0, ["error", "predicted"]] = ["OSError: unreadable", None]
    cells.loc[1, "predicted"] = None  # no prediction and no error: still cannot be counted
    cells.loc[2, "qc_flags"] = "blurry;dark"
    cells.loc[3, "qc_flags"] = "blurry"
    cells.loc[4, "qc_flags"] = None  # a parquet round trip may turn "" into None: still clean
    row = summarize_slide("s", cells, PBC)
    assert (row["n_errors"], row["n_flagged"], row["n_cells"]) == (2, 2, 46)
    assert row["qc_flag_counts"] == "blurry:2;dark:1"


def test_labels_give_truth_and_agreement():
    cells = make_cells(PBC, 120, n_errors=3, n_flagged=2)
    row = summarize_slide("s", cells, PBC)
    counted = cells[cells["error"].isna() & (cells["qc_flags"] == "")]
    assert row["n_labelled"] == len(counted)
    assert row["agreement"] == pytest.approx(float((counted["label"] == counted["predicted"]).mean()))
    assert sum(row[f"true_count_{c}"] for c in PBC.classes) == len(counted)
    true_base = int(counted["label"].isin(PBC.counted).sum())
    assert row["true_n_base"] == true_base
    assert row["true_pct_lymphocyte"] == pytest.approx(100 * (counted["label"] == "lymphocyte").sum() / true_base)
    assert row["true_nlr"] == pytest.approx(row["true_count_neutrophil"] / row["true_count_lymphocyte"])


def test_no_labels_no_truth_columns():
    row = summarize_slide("s", make_cells(PBC, 40, labels=False), PBC)
    assert not any(k.startswith("true_") for k in row) and "agreement" not in row
    row = summarize_slide("s", make_cells(PBC, 40).drop(columns="label"), PBC)
    assert "agreement" not in row


def test_prediction_outside_taxonomy_is_an_error():
    cells = make_cells(PBC, 20)
    cells.loc[3, "predicted"] = "BLA"
    with pytest.raises(ValueError, match="BLA"):
        summarize_slide("s", cells, PBC)


def test_slide_with_nothing_counted():
    cells = make_cells(MATEK, 10, n_errors=10)
    row = summarize_slide("s", cells, MATEK)
    assert (row["n_cells"], row["n_base"], row["n_errors"]) == (0, 0, 10)
    assert math.isnan(row["pct_BLA"]) and math.isnan(row["ci_low_BLA"]) and math.isnan(row["me_ratio"])
    assert math.isnan(row["ci_high_ART"]) and row["soft_BLA"] == 0.0


def test_row_is_plain_json():
    """Rows go into slide.json (resume): numpy scalars would come back as strings."""
    row = summarize_slide("s", make_cells(MATEK, 100, n_errors=2), MATEK, patient_id="P")
    again = json.loads(json.dumps(row))
    assert all(type(again[k]) is type(v) for k, v in row.items() if v is not None)


def test_table_column_order_does_not_depend_on_row_order():
    labelled = summarize_slide("a", make_cells(PBC, 60), PBC)
    plain = summarize_slide("b", make_cells(PBC, 60, labels=False, seed=1), PBC)
    first, second = differential_table([plain, labelled]), differential_table([labelled, plain])
    assert list(first.columns) == list(second.columns) == list(labelled)
    assert first["agreement"].isna().tolist() == [True, False]


def test_write_differential_round_trips(tmp_path):
    rows = [summarize_slide(f"slide-{i}", make_cells(t, 150, seed=i, n_errors=2, labels=i != 1), t,
                            patient_id=None if i == 2 else f"P{i}")
            for i, t in enumerate([PBC, PBC, PBC])]
    meta = {"model_sha256": "ab" * 32, "bmengine_version": "9.9.9", "model_name": "tiny"}
    csv_path, parquet_path = write_differential(rows, tmp_path / "out", metadata=meta)
    assert (csv_path.name, parquet_path.name) == ("differential.csv", "differential.parquet")
    assert not list((tmp_path / "out").glob("*.partial"))
    from_csv, from_parquet = pd.read_csv(csv_path), pd.read_parquet(parquet_path)
    assert list(from_csv.columns) == list(from_parquet.columns) == list(differential_table(rows).columns) + [
        "model_sha256", "bmengine_version"]
    assert set(from_csv["model_sha256"]) == {"ab" * 32} and set(from_parquet["bmengine_version"]) == {"9.9.9"}
    numeric = from_parquet.select_dtypes("number").columns
    pd.testing.assert_frame_equal(from_csv[numeric], from_parquet[numeric], check_dtype=False, rtol=0, atol=0)
    assert from_csv["slide_id"].tolist() == from_parquet["slide_id"].tolist() == ["slide-0", "slide-1", "slide-2"]
    assert from_parquet["count_neutrophil"].tolist() == [r["count_neutrophil"] for r in rows]
    assert read_metadata(parquet_path) == meta
    assert pq.read_schema(parquet_path).metadata[b"bmengine"]


def test_row_provenance_is_kept_and_version_defaults(tmp_path):
    row = summarize_slide("s", make_cells(PBC, 30), PBC)
    row["model_sha256"] = "cd" * 32
    csv_path, _ = write_differential([row], tmp_path)
    table = pd.read_csv(csv_path)
    assert table.loc[0, "model_sha256"] == "cd" * 32
    from bmengine.engine import __version__
    assert table.loc[0, "bmengine_version"] == __version__


def _written_pair(out_dir) -> tuple[bytes, bytes]:
    return (out_dir / "differential.csv").read_bytes(), (out_dir / "differential.parquet").read_bytes()


def _leftovers(out_dir) -> list:
    return sorted(p.name for p in out_dir.iterdir() if p.suffix in (".partial", ".previous"))


def test_failed_parquet_write_leaves_both_previous_files(tmp_path, monkeypatch):
    """The CSV must not move to the new table while the parquet stays on the old one."""
    write_differential([summarize_slide("s", make_cells(PBC, 30), PBC)], tmp_path)
    before = _written_pair(tmp_path)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(differential.pq, "write_table", boom)
    with pytest.raises(OSError, match="disk full"):
        write_differential([summarize_slide("t", make_cells(PBC, 30, seed=3), PBC)], tmp_path)
    assert _written_pair(tmp_path) == before
    assert pd.read_csv(tmp_path / "differential.csv")["slide_id"].tolist() == ["s"]
    assert not _leftovers(tmp_path)


@pytest.mark.parametrize("failing", ["differential.csv", "differential.parquet"])
def test_a_failed_rename_puts_both_files_back(tmp_path, monkeypatch, failing):
    """Two files, two renames: if either rename fails, the one already done is undone."""
    write_differential([summarize_slide("s", make_cells(PBC, 30), PBC)], tmp_path)
    before = _written_pair(tmp_path)
    real_replace = differential.os.replace

    def replace(src, dst):
        if str(src).endswith(".partial") and Path(dst).name == failing:
            raise OSError("rename refused")
        return real_replace(src, dst)

    monkeypatch.setattr(differential.os, "replace", replace)
    with pytest.raises(OSError, match="rename refused"):
        write_differential([summarize_slide("t", make_cells(PBC, 30, seed=3), PBC)], tmp_path)
    assert _written_pair(tmp_path) == before
    assert not _leftovers(tmp_path)


def test_a_failed_first_write_leaves_no_files(tmp_path, monkeypatch):
    real_replace = differential.os.replace

    def replace(src, dst):
        if Path(dst).name == "differential.parquet":
            raise OSError("rename refused")
        return real_replace(src, dst)

    monkeypatch.setattr(differential.os, "replace", replace)
    with pytest.raises(OSError, match="rename refused"):
        write_differential([summarize_slide("t", make_cells(PBC, 30), PBC)], tmp_path)
    assert list(tmp_path.iterdir()) == []
