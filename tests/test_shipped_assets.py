"""The shipped default model and the demo's sample slides: honest, consistent, small enough."""

from __future__ import annotations

import collections
import math
import subprocess

import numpy as np
import pandas as pd
import pytest

from bmengine.engine.assets import ASSETS as ENGINE_ASSETS, DEFAULT_MODEL, SAMPLE_SLIDES
from bmengine.engine.demo import MIXTURES, validation_files
from bmengine.engine.model import load_card
from bmengine.engine.store import SlideStore, find_slide_stores
from bmengine.engine.taxonomy import get_taxonomy
from conftest import ASSETS, BMENGINE, PBC  # ASSETS: tests/assets


def test_assets_fit_the_size_budget():
    """What installs with the engine stays small: the int8 default (31.5 MB) and five sample slides
    (21 MB); until 2026-11-26 this test measured tests/assets by mistake, and the engine's had grown to
    50.1 MiB. The fine-tuning checkpoint (not in the wheel) is weights in half precision, without
    optimiser state."""
    installed = sum(p.stat().st_size for p in ENGINE_ASSETS.rglob("*") if p.is_file() and p.suffix != ".pt")
    assert installed <= 52 * 1024 * 1024, f"shipped assets are {installed / 2**20:.1f} MiB"
    checkpoints = list(ENGINE_ASSETS.rglob("*.pt"))
    assert [p.name for p in checkpoints] == ["pbc_coatnet0_cs.checkpoint.pt"]
    size = checkpoints[0].stat().st_size
    assert size <= 56 * 1024 * 1024, f"{checkpoints[0]}: {size / 2**20:.1f} MiB"


def test_default_model_names_the_checkpoint_finetune_starts_from():
    """`bmengine finetune` of the shipped default works on a fresh clone: its card names the checkpoint
    it was exported from and the half-precision copy beside it, byte for byte."""
    from bmengine.engine.model.card import sha256_of

    record = load_card(DEFAULT_MODEL).training["checkpoint"]
    # make default-model's recipe, its seed-0 run trained on a lent H200 (benchmarks/gpu_training.py join)
    assert record["file"] == "runs/gpu-h200/bn-seed0/checkpoints/last.pt"
    beside = DEFAULT_MODEL.parent / record["beside_model"]["file"]
    assert beside.is_file() and sha256_of(beside) == record["beside_model"]["sha256"]
    assert record["beside_model"]["weights"] == "float16"


def test_the_finetune_checkpoint_holds_the_shipped_models_weights(tmp_path):
    """The half-precision checkpoint, run through the torch backend, predicts what the shipped int8
    model predicts on 48 held-out crops (6 per class): a stale or wrong checkpoint would fine-tune
    some other model (the sha256 test above only shows the file is the one the card names). Bounds:
    int8 and fp32 differ by 0.0005 macro-F1 on 2,399 crops, so at most 2 flips in 48 and a mean |dp|
    under 0.02; untrained weights, or weights loaded into the wrong layers, disagree on most crops."""
    torch = pytest.importorskip("torch", reason="reading the checkpoint needs the [train] extra")
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import predict_files
    from bmengine.engine.model import sha256_of, write_card
    from bmengine.training.finetune import checkpoint_of

    beside = checkpoint_of(DEFAULT_MODEL)
    assert beside == DEFAULT_MODEL.with_name("pbc_coatnet0_cs.checkpoint.pt")
    state = torch.load(beside, map_location="cpu", weights_only=True)
    pt = tmp_path / "default.pt"  # what the torch backend reads: the network and its weights
    torch.save({"model_spec": state["model_spec"], "model": state["model"]}, pt)
    card = load_card(DEFAULT_MODEL)
    card.weights_file, card.weights_sha256, card.precision = pt.name, sha256_of(pt), "fp32"
    write_card(card, pt)
    sample = _held_out_sample().groupby("label").head(6)
    files = [PBC / f for f in sample["file"]]
    shipped, _ = predict_files(load_backend(DEFAULT_MODEL), files)
    from_checkpoint, errors = predict_files(load_backend(pt), files)
    assert not any(errors)
    assert (shipped.argmax(axis=1) != from_checkpoint.argmax(axis=1)).sum() <= 2
    assert np.abs(shipped - from_checkpoint).mean() < 0.02


def test_default_model_card_records_both_precisions():
    card = load_card(DEFAULT_MODEL)  # verifies the sha256 too
    assert card.precision == "int8" and card.taxonomy == "pbc-blood-8"
    assert card.architecture["backbone"] == "coatnet_0" and card.architecture["attention"] == "none"
    assert card.architecture["loss"] == "cost_sensitive" and card.preprocessing.crop == 128
    assert card.training["int8_ops"]["set"] == "conv"  # attention and LayerNorm stay fp32 (docs/training.md)
    # make default-model's recipe, run by benchmarks/gpu_training.py on a lent GPU: the card says where,
    # and how the training images travelled there
    assert card.training["command"].startswith("gpu_training.py train-arm bn-seed0 ")
    assert card.training["devices"] == ["cuda:0 (NVIDIA H200)"] and card.training["seed"] == 0
    assert "re-encoded as JPEG quality 90" in card.training["data_note"]
    augmentation = card.training["augmentation"]  # the cross-lab augmentation on a quarter of each batch
    assert augmentation["preset"] == "cross-lab"
    assert augmentation["options"] == {"colour_p": 0.25, "zoom_p": 0.25}
    assert "interpolated" not in card.training
    base = card.training["started_from"]  # the 10 cross-lab epochs those 4 started from
    assert base["checkpoint"].endswith("/bn-seed0/base/checkpoints/last.pt") and base["epochs"] == 10
    assert base["augmentation"]["options"] == {"colour_p": 0.5, "zoom_p": 0.5} and base["init_from"] is None
    val, fp32 = card.metrics["validation"], card.metrics["fp32_validation"]
    assert 0.5 < val["macro_f1"] <= 1 and 0.5 < fp32["macro_f1"] <= 1
    assert card.training["command"] and card.training["train_seconds"] > 0 and card.training["train_img_per_s"] > 0


# int8 validation macro-F1 a re-trained default must reach. Issue 3 set 0.97; the default retrained
# for other labs' slides (issue 10: cellavision_blog 0.27 -> 0.41, tecom 0.07 -> 0.29) claims
# 0.9675 on its own split, and the bar was lowered to 0.965 with that trade-off put to the product
# owner (closing note of stop 16). The clean pass + interpolation default of 2026-11-26 claimed 0.9744,
# the mixed clean pass that replaced it on 2026-11-26 0.9758, the same recipe's seed-0 run trained on an
# H200 that replaced that one 0.9812.
# The sample check below still holds the card's claim to +-3 SE.
SHIPPING_BAR = 0.965
HELD_OUT_SAMPLE = ASSETS / "shipped_heldout_sample.csv"  # tests/assets/make_shipped_heldout_sample.py


def _held_out_sample() -> pd.DataFrame:
    return pd.read_csv(HELD_OUT_SAMPLE, comment="#")


def _per_class_recall(confusion: list[list[int]]) -> np.ndarray:
    cm = np.asarray(confusion, dtype=float)
    return np.diag(cm) / cm.sum(axis=1)


def test_held_out_sample_is_stratified_and_never_trained_on():
    """The sample was drawn from the split the card says the model never trained on, for this model."""
    card = load_card(DEFAULT_MODEL, verify_sha=False)
    first_line = HELD_OUT_SAMPLE.read_text().splitlines()[0]
    assert card.weights_sha256 in first_line, "the shipped model changed: re-draw the sample (see its script)"
    sample = _held_out_sample()
    held_out = {f"{p.parent.name}/{p.name}" for p in validation_files(
        PBC, tuple(card.classes), card.training["seed"], card.training["val_fraction"])}
    assert set(sample["file"]) <= held_out and sample["file"].is_unique
    assert sample["label"].value_counts().to_dict() == {c: 40 for c in card.classes}
    assert (sample["file"].str.split("/").str[0] == sample["label"]).all()


def test_default_model_meets_the_shipping_bar_on_held_out_crops():
    """Re-measure the shipped int8 model through the engine on 320 held-out crops (40 per class)
    and hold its card to what it says. Nothing here trusts the card's metrics unchecked.

    Tolerance: on a class-balanced sample macro-recall is the mean of 8 per-class hit rates, each
    binomial over 40 crops, so its standard error is ``sqrt(sum r_c (1 - r_c) / 40) / 8`` with the
    per-class recalls r_c of the card's own confusion matrix (2399 crops): 0.0065 for the shipped
    model. A model as good as its card lands below its claimed macro-recall minus 3 standard
    errors (0.966) with probability about 0.1%; one 2-3 points worse than its card (or fed crops
    resized or normalised differently) fails. The same bound holds macro-F1 to the card's fp32
    macro-F1 (no fp32 file ships; int8 and fp32 differ by 0.0005 on the card's 2399 crops, far
    inside it). The shipping bar (SHIPPING_BAR) applies to the card's claim on 2399 crops (standard error
    0.0023) once the sample shows that claim holds. Recorded predictions (made when the sample was
    drawn) must still come out, bar at most 1% of crops: the engine's path has not drifted.
    """
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import predict_files
    from bmengine.engine.metrics import classification_report

    backend = load_backend(DEFAULT_MODEL)
    card = backend.card
    sample = _held_out_sample()
    probs, errors = predict_files(backend, [PBC / f for f in sample["file"]])
    assert not any(errors)
    classes = list(card.classes)
    report = classification_report(np.array([classes.index(c) for c in sample["label"]]), probs, classes)

    claimed, fp32 = card.metrics["validation"], card.metrics["fp32_validation"]
    recall = _per_class_recall(claimed["confusion_matrix"])
    assert np.mean(recall) == pytest.approx(claimed["macro_recall"])  # the matrix is the claim's
    se = math.sqrt(float(np.sum(recall * (1 - recall))) / 40) / len(classes)
    assert report["macro_recall"] >= claimed["macro_recall"] - 3 * se, (
        f"macro-recall {report['macro_recall']:.4f} on held-out crops; card claims {claimed['macro_recall']:.4f}")
    assert report["macro_f1"] >= fp32["macro_f1"] - 3 * se, (
        f"int8 macro-F1 {report['macro_f1']:.4f} on held-out crops; card's fp32 model {fp32['macro_f1']:.4f}")
    assert claimed["macro_f1"] >= SHIPPING_BAR and fp32["macro_f1"] - claimed["macro_f1"] <= 0.005
    predicted = np.asarray(classes, dtype=object)[probs.argmax(axis=1)]
    assert (predicted != sample["int8_predicted"].to_numpy()).sum() <= len(sample) // 100


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
