"""--label-map: a lab's label names -> the model's classes, for `eval` and `run` (issue 10, item 3)."""

from __future__ import annotations

import csv
import json

import pandas as pd
import pytest

from bmengine.engine.assets import ASSETS
from bmengine.engine.labels import LabelMap, LabelMapError, foreign_labels
from cli_helpers import bmengine
from conftest import BM, DATA, write_manifest

PBC_CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
MATEK_MAP = ASSETS / "label_maps" / "matek_to_pbc.csv"


def _map(tmp_path, rows) -> "Path":
    path = tmp_path / "map.csv"
    path.write_text("source,model_class\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return path


def test_a_map_renames_ignores_and_passes_through(tmp_path):
    labels = LabelMap.load(_map(tmp_path, [("NGS", "neutrophil"), ("BLA", ""), ("_masks", "-")]), PBC_CLASSES)
    assert labels("NGS") == "neutrophil" and labels("lymphocyte") == "lymphocyte" and labels(None) is None
    assert labels.ignored("BLA") and labels.ignored("_masks") and not labels.ignored("NGS")
    assert foreign_labels(["NGS", "BLA", "PLM", "monocyte"], PBC_CLASSES, labels) == ["PLM"]


@pytest.mark.parametrize("rows,message", [([("NGS", "neutrofil")], "not a class of this model"),
                                          ([("NGS", "neutrophil"), ("NGS", "ig")], "mapped twice"),
                                          ([("", "ig")], "empty source")])
def test_a_map_that_cannot_be_right_is_refused(tmp_path, rows, message):
    with pytest.raises(LabelMapError, match=message):
        LabelMap.load(_map(tmp_path, rows), PBC_CLASSES)


def test_the_shipped_matek_map_covers_all_21_classes():
    from bmengine.engine.taxonomy import get_taxonomy

    rows = list(csv.DictReader(open(MATEK_MAP)))
    assert sorted(r["source"] for r in rows) == sorted(get_taxonomy("matek-bone-marrow-21").classes)
    LabelMap.load(MATEK_MAP, PBC_CLASSES)


def test_eval_scores_another_labs_folders_through_a_map(tiny_model, tmp_path):
    subset = DATA / "wbc_zheng" / "cellavision_blog"
    refused = bmengine("eval", subset, "--model", tiny_model)
    assert refused.returncode == 2 and "_masks" in refused.stderr and "--label-map" in refused.stderr
    result = bmengine("eval", subset, "--model", tiny_model, "--json", "--label-map", _map(tmp_path, [("_masks", "")]))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["n"] == 100


def test_run_names_foreign_labels_and_scores_mapped_ones(tiny_model, tmp_path):
    rows = [{"path": str(p), "slide_id": "M1", "label": p.parent.name} for p in sorted(BM.glob("*/*.jpg"))]
    write_manifest(tmp_path / "m.csv", rows)
    assert bmengine("ingest", "--manifest", tmp_path / "m.csv", "--out", tmp_path / "slides").returncode in (0, 1)
    plain = bmengine("run", tmp_path / "slides", "--model", tiny_model, "--out", tmp_path / "plain")
    assert "labels" in plain.stderr and "NGS" in plain.stderr and "--label-map" in plain.stderr
    mapped = bmengine("run", tmp_path / "slides", "--model", tiny_model, "--out", tmp_path / "mapped",
                      "--label-map", MATEK_MAP)
    assert "are not classes of model" not in mapped.stderr, mapped.stderr
    cells = pd.read_parquet(tmp_path / "mapped" / "M1" / "cells.parquet")
    expected = {r["source"]: r["model_class"] or None for r in csv.DictReader(open(MATEK_MAP))}
    got = [None if pd.isna(label) else label for label in cells["label"]]
    assert got == [expected[source.split("/")[-2]] for source in cells["source"]]
    row = pd.read_csv(tmp_path / "mapped" / "differential.csv").iloc[0]
    assert row["n_labelled"] > 0
