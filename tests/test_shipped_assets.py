"""The shipped default model and the demo's sample slides: honest, consistent, small enough."""

from __future__ import annotations

import collections
import subprocess

import pandas as pd
import pytest

from bmengine.engine.assets import ASSETS, DEFAULT_MODEL, SAMPLE_SLIDES
from bmengine.engine.demo import MIXTURES, validation_files
from bmengine.engine.model import load_card
from bmengine.engine.store import SlideStore, find_slide_stores
from bmengine.engine.taxonomy import get_taxonomy
from conftest import BMENGINE, PBC


def test_assets_fit_the_size_budget():
    total = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    assert total <= 50 * 1024 * 1024, f"shipped assets are {total / 2**20:.1f} MiB"


def test_default_model_card_records_both_precisions():
    card = load_card(DEFAULT_MODEL)  # verifies the sha256 too
    assert card.precision == "int8" and card.taxonomy == "pbc-blood-8"
    assert card.architecture["backbone"] == "coatnet_0" and card.architecture["attention"] == "none"
    assert card.architecture["loss"] == "cost_sensitive" and card.preprocessing.crop == 128
    assert card.training["int8_ops"]["set"] == "conv"  # attention and LayerNorm stay fp32 (docs/training.md)
    assert card.training["command"].startswith("bmengine train ")
    val, fp32 = card.metrics["validation"], card.metrics["fp32_validation"]
    assert 0.5 < val["macro_f1"] <= 1 and 0.5 < fp32["macro_f1"] <= 1
    assert card.training["command"] and card.training["train_seconds"] > 0 and card.training["train_img_per_s"] > 0


def test_default_model_meets_the_shipping_bar():
    """What a re-trained default must reach before it replaces the shipped one (issue 3's target)."""
    card = load_card(DEFAULT_MODEL, verify_sha=False)
    int8, fp32 = card.metrics["validation"]["macro_f1"], card.metrics["fp32_validation"]["macro_f1"]
    assert int8 >= 0.97, f"int8 validation macro-F1 {int8:.4f} < 0.97"
    assert fp32 - int8 <= 0.005, f"int8 loses {100 * (fp32 - int8):.2f} points to fp32 (> 0.5)"


def test_sample_slides_are_known_mixtures_of_validation_crops():
    card = load_card(DEFAULT_MODEL, verify_sha=False)
    taxonomy = get_taxonomy(card.taxonomy)
    held_out = {f"{p.parent.name}/{p.name}" for p in validation_files(
        PBC, taxonomy.classes, card.training["seed"], card.training["val_fraction"])}
    stores = [SlideStore.open(p) for p in find_slide_stores(SAMPLE_SLIDES)]
    assert sorted(s.slide_id for s in stores) == sorted(MIXTURES)
    for store in stores:
        assert set(store.sources()) <= held_out, f"{store.slide_id} holds crops the model trained on"
        assert len(set(store.sources())) == store.n_cells  # no crop twice within a patient
        labels = collections.Counter(store.labels())
        base = sum(k for c, k in labels.items() if c not in taxonomy.excluded)
        known = store.provenance["known_mixture_pct"]
        for cls in taxonomy.classes:
            assert 100 * labels.get(cls, 0) / base == pytest.approx(known[cls])


def test_demo_run_recovers_the_known_differentials(tmp_path):
    result = subprocess.run(BMENGINE + ["run", str(SAMPLE_SLIDES), "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "differential.csv").set_index("slide_id")
    for slide_id in MIXTURES:
        row = table.loc[slide_id]
        assert row["agreement"] >= 0.9, f"{slide_id}: only {row['agreement']:.1%} of crops right"
        assert abs(row["pct_neutrophil"] - row["true_pct_neutrophil"]) < 8
        assert abs(row["pct_lymphocyte"] - row["true_pct_lymphocyte"]) < 8
