"""Issue 10 items 2 and 4: the Mahalanobis OOD output of exported models and the engine's
``unknown`` flag; temperature scaling stored in the card and applied by every backend."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bmengine.engine.model.card import ModelCard, ModelCardError, card_path_for, load_card
from conftest import pbc_files

CLASSES = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")


# -- helpers --------------------------------------------------------------------------------------

def _decode(card, files) -> np.ndarray:
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    pipeline = CropPipeline(PipelineSpec.from_preprocessing(card.preprocessing, batch_size=len(files)))
    batch, errors = pipeline.decode_to_numpy([Path(f).read_bytes() for f in files])
    assert not any(errors)
    return batch


def _split(trained_run: Path) -> dict:
    return json.loads((trained_run.parents[1] / "split.json").read_text())


def _labels(files) -> np.ndarray:
    return np.asarray([next(CLASSES.index(p) for p in reversed(Path(f).parts[:-1]) if p in CLASSES) for f in files])


def _ort_outputs(path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    from bmengine.engine.backends.onnxruntime_backend import session_options

    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {"image": batch})))


def _copy_bundle(model: Path, target_dir: Path, **card_changes) -> Path:
    """The model and its card copied; card fields changed (the weights, hence the sha256, are not)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / model.name
    shutil.copy(model, target)
    card = json.loads(card_path_for(model).read_text())
    card.update(card_changes)
    card_path_for(target).write_text(json.dumps(card))
    return target


def _run_engine(model: Path, tmp_path: Path, n_per_class: int = 2) -> pd.DataFrame:
    from bmengine.engine.pipeline.run import RunConfig, run_engine
    from bmengine.engine.store.ingest import ingest_folder

    crops = tmp_path / "crops" / "slide-a"
    crops.mkdir(parents=True, exist_ok=True)
    for cls in CLASSES:
        for f in pbc_files(cls, n_per_class):
            shutil.copy(f, crops / f.name)
    ingest_folder(tmp_path / "crops", tmp_path / "slides")
    run_engine(RunConfig(tmp_path / "slides", model, tmp_path / "out", batch_size=8))
    return pd.read_parquet(tmp_path / "out" / "slide-a" / "cells.parquet")


# -- the scores, in NumPy -------------------------------------------------------------------------

def test_tied_gaussian_score_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    from bmengine.training import ood

    rng = np.random.default_rng(0)
    means = np.array([[0.0] * 6, [6.0] * 6, [-6.0, 6.0, 0, 0, 0, 0]])
    labels = rng.integers(0, 3, 3000)
    a = rng.standard_normal((6, 6))
    cov = a @ a.T / 6 + 0.2 * np.eye(6)
    x = means[labels] + rng.multivariate_normal(np.zeros(6), cov, 3000)
    stats = ood.fit_tied_gaussian(x, labels)
    test = rng.standard_normal((5, 6)) * 3
    fitted_means = np.stack([x[labels == c].mean(0) for c in range(3)])
    centred = x - fitted_means[labels]
    shrunk, _ = ood.ledoit_wolf(centred, ood.MIN_SHRINKAGE)
    precision = np.linalg.inv(shrunk)
    expected = np.min([np.einsum("nd,de,ne->n", test - m, precision, test - m) for m in fitted_means], axis=0)
    assert np.allclose(stats.score(test), expected, rtol=1e-3)
    # in-distribution squared distances follow roughly a chi-square with 6 degrees of freedom
    assert 3.5 < np.median(stats.score(x)) < 6.5
    assert stats.shrinkage == ood.MIN_SHRINKAGE


def test_ledoit_wolf_shrinks_more_when_there_are_fewer_samples_than_dimensions():
    from bmengine.training import ood

    rng = np.random.default_rng(1)
    scales = np.diag(np.linspace(0.2, 3.0, 50))  # a covariance far from a multiple of the identity
    few = rng.standard_normal((20, 50)) @ scales
    many = rng.standard_normal((5000, 50)) @ scales
    cov_few, s_few = ood.ledoit_wolf(few - few.mean(0))
    _, s_many = ood.ledoit_wolf(many - many.mean(0))
    assert s_few > s_many and 0 < s_few <= 1
    assert np.linalg.eigvalsh(cov_few).min() > 0  # invertible although n < p


def test_threshold_gives_the_false_flag_rate_and_auroc_is_a_rank_statistic():
    from bmengine.training import ood

    rng = np.random.default_rng(2)
    known = rng.chisquare(10, 4000)
    threshold = ood.threshold_at(known[:2000], 0.05)
    assert np.mean(known[:2000] > threshold) <= 0.05
    held = np.mean(known[2000:] > threshold)  # fresh in-distribution scores
    assert abs(held - 0.05) < 3 * np.sqrt(0.05 * 0.95 / 2000) + 1e-3
    assert ood.auroc(known + 100, known) == 1.0
    assert ood.auroc(known, known + 100) == 0.0
    assert ood.auroc(np.array([1.0, 2.0]), np.array([1.0, 0.0])) == pytest.approx(0.875)


def test_energy_and_max_softmax_scores_rise_for_flat_logits():
    from bmengine.training import ood

    logits = np.array([[10.0, 0, 0], [1.0, 0.9, 0.8]])
    assert np.all(np.diff(ood.energy_score(logits)) > 0)
    assert np.all(np.diff(ood.max_softmax_score(logits)) > 0)


# -- the exported model ---------------------------------------------------------------------------

def test_exported_models_have_the_ood_output_and_card_records(trained_run):
    import onnx

    for path in (trained_run.with_name("tiny.onnx"), trained_run):
        card = load_card(path)
        outputs = [o.name for o in onnx.load(str(path)).graph.output]
        assert outputs == ["logits", "ood_score"], path.name
        assert card.ood["output"] == "ood_score" and card.ood["score"] == "mahalanobis+energy"
        assert card.ood["standardise"]["feature_std"] > 0 and card.ood["standardise"]["energy_std"] > 0
        assert card.ood["standardise"]["fitted_on"].startswith("validation split")
        assert card.ood["false_flag_rate"] == 0.05 and np.isfinite(card.ood["threshold"])
        assert card.ood["feature_dim"] > 0 and "training-split" in card.ood["fitted_on"]
        assert card.calibration["temperature"] > 0 and "validation split" in card.calibration["fitted_on"]
        assert {"ece_before", "ece_after"} <= set(card.calibration)


def test_ood_score_equals_numpy_mahalanobis_of_the_features(trained_run):
    """Features from the checkpoint (PyTorch) on the run's training split -> class means and the
    shrunk shared covariance, by hand -> distances of real crops; the ONNX output agrees."""
    import torch

    from bmengine.training import ood
    from bmengine.training.checkpoint import load_model

    fp32 = trained_run.with_name("tiny.onnx")
    card = load_card(fp32)
    model, state = load_model(trained_run.parents[1] / "checkpoints" / "last.pt")
    tap = ood.feature_model(model, len(CLASSES))
    train = _split(trained_run)["train"]
    with torch.no_grad():
        _, features = tap(torch.from_numpy(_decode(card, train)))
    features = features.numpy().astype(np.float64)
    labels = _labels(train)
    assert features.shape[1] == card.ood["feature_dim"]
    present = np.unique(labels)
    means = np.stack([features[labels == c].mean(0) for c in present])
    cov, _ = ood.ledoit_wolf(features - means[np.searchsorted(present, labels)], ood.MIN_SHRINKAGE)
    cov += 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
    crops = pbc_files("monocyte", 2) + pbc_files("platelet", 2) + pbc_files("neutrophil", 2)
    batch = _decode(card, crops)
    with torch.no_grad():
        _, f = tap(torch.from_numpy(batch))
    f = f.numpy().astype(np.float64)
    expected = np.min([np.einsum("nd,nd->n", f - m, np.linalg.solve(cov, (f - m).T).T) for m in means], axis=0)
    got = _ort_outputs(fp32, batch)["ood_score"]
    assert got.shape == (len(crops),)
    assert np.allclose(got, expected, rtol=2e-2), (got, expected)


def test_threshold_gives_the_recorded_false_flag_rate_on_validation(trained_run):
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import score_files

    for path in (trained_run.with_name("tiny.onnx"), trained_run):
        card = load_card(path)
        val = _split(trained_run)["val"]
        scores = score_files(load_backend(path), val).ood_score
        flagged = float(np.mean(scores > card.ood["threshold"]))
        rate, n = card.ood["false_flag_rate"], len(val)
        assert flagged <= rate  # at most the rate on the crops it was set on
        assert rate - flagged <= 3 * np.sqrt(rate * (1 - rate) / n) + 1 / n  # and not far below it
        assert flagged == pytest.approx(card.ood["validation_flagged"], abs=1e-4)


def test_int8_ood_head_stays_fp32_and_its_score_is_close_to_fp32(trained_run):
    import onnx

    from bmengine.training.ood import FEATURE_PATH_OPS, head_nodes

    graph = onnx.load(str(trained_run)).graph
    head = set(head_nodes(graph))
    producer = {out: node for node in graph.node for out in node.output}
    assert head
    for node in graph.node:
        if node.name in head:
            assert node.op_type not in ("QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "MatMulInteger")
            assert all(producer[i].op_type != "DequantizeLinear" for i in node.input if i in producer), node.name
    # the features themselves are float all the way from the last computing operator: no Q->DQ
    # copy on the pooling and flattening between it and the head (timm models have both)
    for name in {i for node in graph.node if node.name in head for i in node.input if i in producer} - {
            o for node in graph.node if node.name in head for o in node.output}:
        path = []
        while name in producer and producer[name].op_type in FEATURE_PATH_OPS + ("DequantizeLinear",):
            path.append(producer[name].op_type)
            name = producer[name].input[0]
        assert "DequantizeLinear" not in path, path
    # and the logits are the classifier's float output, not a Q->DQ'd copy clipped at the calibrated range
    assert producer["logits"].op_type not in ("DequantizeLinear", "QuantizeLinear")
    crops = [f for cls in CLASSES for f in pbc_files(cls, 5)]
    card = load_card(trained_run)
    batch = _decode(card, crops)
    fp32 = _ort_outputs(trained_run.with_name("tiny.onnx"), batch)["ood_score"]
    int8 = _ort_outputs(trained_run, batch)["ood_score"]
    from scipy.stats import spearmanr

    # the int8 model's features carry quantisation noise, which the precision matrix amplifies in
    # the directions where training features barely vary: the scores rise but keep their order, and
    # the int8 card's threshold is set on the int8 model's own validation scores. Measured with the
    # symmetric int8 export (percentile ranges): on this 6-step model, trained afresh on each
    # machine, Spearman 0.66-0.9 and a median ratio of about 5, once 10.7 (a fresh clone,
    # 2026-11-26); on the shipped default the two thresholds are 64 (fp32) and 99 (int8). A
    # quantised or broken head gives Spearman about 0 (+-0.16 on 40 crops): the order is the check,
    # the ratio only bounds the scale (a head applied to unscaled features would be off by orders
    # of magnitude).
    assert spearmanr(fp32, int8).statistic > 0.5
    assert 0.5 < np.median(int8 / fp32) < 30
    assert card.ood["threshold"] != load_card(trained_run.with_name("tiny.onnx")).ood["threshold"]


def test_backend_score_is_the_standardised_sum_of_the_graph_distance_and_the_energy(trained_run, tmp_path):
    """What the threshold applies to, recomputed by hand from the runtime's raw outputs and the
    card's constants; a card without them gets the graph's distance alone."""
    from bmengine.engine.backends import load_backend

    card = load_card(trained_run)
    parts = card.ood["standardise"]
    batch = _decode(card, [f for cls in CLASSES for f in pbc_files(cls, 2)])
    backend = load_backend(trained_run)
    logits, distance = backend.forward(batch)
    x = logits.astype(np.float64)
    energy = -(x.max(1) + np.log(np.exp(x - x.max(1, keepdims=True)).sum(1)))
    expected = ((distance - parts["feature_mean"]) / parts["feature_std"]
                + (energy - parts["energy_mean"]) / parts["energy_std"])
    got = backend.infer(batch).ood_score
    assert np.allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.corrcoef(got, distance)[0, 1] < 0.9999  # the energy part moves it
    plain = {k: v for k, v in card.ood.items() if k != "standardise"}
    distance_only = _copy_bundle(trained_run, tmp_path, ood={**plain, "score": "mahalanobis-tied"})
    assert np.allclose(load_backend(distance_only).infer(batch).ood_score, distance)


def test_standardiser_centres_each_part_on_the_data_it_was_fitted_on():
    from bmengine.engine.backends.ood_score import Standardiser, energy

    rng = np.random.default_rng(0)
    distance = rng.gamma(4.0, 20.0, size=500)
    logits = rng.normal(size=(500, 8)) * rng.uniform(1, 6, size=(500, 1))
    s = Standardiser.fit(distance, logits)
    combined = s.combine(distance, logits)
    assert abs(combined.mean()) < 1e-4
    e = (energy(logits) - s.energy_mean) / s.energy_std
    f = (distance - s.feature_mean) / s.feature_std
    assert np.allclose(combined, f + e, atol=1e-5)
    assert Standardiser.from_record({**s.as_record(), "fitted_on": "x"}).combine(distance, logits) == \
        pytest.approx(combined, abs=1e-4)
    flat, peaked = np.zeros((1, 8)), np.eye(8)[:1] * 20  # flatter logits: higher energy, higher score
    assert s.combine(np.array([50.0]), flat)[0] > s.combine(np.array([50.0]), peaked)[0]


# -- the engine -----------------------------------------------------------------------------------

def test_engine_flags_unknown_above_the_threshold_and_writes_ood_score(trained_run, tmp_path):
    card = json.loads(card_path_for(trained_run).read_text())
    low = _copy_bundle(trained_run, tmp_path / "low", ood={**card["ood"], "threshold": -1e30})  # scores may be < 0
    cells = _run_engine(low, tmp_path / "run-low")
    assert cells["ood_score"].dtype == np.float32 and np.isfinite(cells["ood_score"]).all()
    assert all("unknown" in flags.split(";") for flags in cells["qc_flags"])
    differential = pd.read_csv(tmp_path / "run-low" / "out" / "differential.csv")
    assert differential["n_cells"].iloc[0] == 0  # flagged crops are not counted

    high = _copy_bundle(trained_run, tmp_path / "high", ood={**card["ood"], "threshold": 1e30})
    cells_high = _run_engine(high, tmp_path / "run-high")
    assert not any("unknown" in flags.split(";") for flags in cells_high["qc_flags"])
    assert np.allclose(cells_high["ood_score"], cells["ood_score"])

    # the card's own threshold: exactly the crops above it are flagged
    cells_own = _run_engine(trained_run, tmp_path / "run-own")
    above = cells_own["ood_score"] > card["ood"]["threshold"]
    assert (cells_own["qc_flags"].str.contains("unknown") == above).all()


def test_unknown_joins_other_qc_flags():
    from bmengine.engine.pipeline.classify import add_flag

    assert add_flag("", "unknown") == "unknown"
    assert add_flag("garbled", "unknown") == "garbled;unknown"


def test_an_old_card_without_the_new_fields_runs_as_before(tiny_model, tmp_path):
    from bmengine.engine.backends import load_backend

    card = load_card(tiny_model)
    assert card.ood == {} and card.calibration == {} and card.temperature == 1.0
    assert "ood" not in json.loads(card.to_json()) and "calibration" not in json.loads(card.to_json())
    backend = load_backend(tiny_model)
    batch = _decode(card, pbc_files("eosinophil", 2))
    inference = backend.infer(batch)
    assert inference.ood_score is None
    raw = _ort_outputs(tiny_model, batch)["logits"]
    assert np.allclose(inference.probs, np.exp(raw) / np.exp(raw).sum(1, keepdims=True), atol=1e-6)
    cells = _run_engine(tiny_model, tmp_path, n_per_class=1)
    assert cells["ood_score"].isna().all()
    assert not cells["qc_flags"].str.contains("unknown").any()


def test_a_card_naming_an_ood_output_the_model_lacks_is_refused(tiny_model, tmp_path):
    from bmengine.engine.backends import load_backend

    fake = {"score": "mahalanobis-tied", "output": "ood_score", "threshold": 10.0, "false_flag_rate": 0.05}
    model = _copy_bundle(tiny_model, tmp_path, ood=fake)
    with pytest.raises(ModelCardError, match="ood_score"):
        load_backend(model)


# -- temperature ----------------------------------------------------------------------------------

def test_onnxruntime_backend_applies_the_cards_temperature(trained_run, tmp_path):
    from bmengine.engine.backends import load_backend

    card = load_card(trained_run)
    t = card.temperature
    batch = _decode(card, pbc_files("lymphocyte", 2) + pbc_files("ig", 2))
    backend = load_backend(trained_run)
    # the backend's own logits: ONNX Runtime's kernels for the int8 file and for the backend's
    # uint8-activation twin round differently in the 5th decimal, which is not what this checks
    raw = backend.forward(batch).logits.astype(np.float64) / t
    expected = np.exp(raw - raw.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    got = backend.infer(batch)
    assert np.allclose(got.probs, expected, atol=1e-6)
    assert np.allclose(raw * t, _ort_outputs(trained_run, batch)["logits"], atol=0.05 * np.abs(raw * t).max())
    other = _copy_bundle(trained_run, tmp_path, calibration={**card.calibration, "temperature": t * 3})
    assert not np.allclose(load_backend(other).infer(batch).probs, got.probs, atol=1e-4)


def test_torch_backend_applies_the_temperature_and_reports_no_ood_score(trained_run, tmp_path):
    from bmengine.engine.backends import load_backend
    from bmengine.engine.model.card import sha256_of

    pt = tmp_path / "last.pt"
    shutil.copy(trained_run.parents[1] / "checkpoints" / "last.pt", pt)
    card = json.loads(card_path_for(trained_run.with_name("tiny.onnx")).read_text())
    card.update(weights_file=pt.name, weights_sha256=sha256_of(pt), precision="fp32")
    card_path_for(pt).write_text(json.dumps(card))
    batch = _decode(load_card(pt), pbc_files("basophil", 2))
    torch_out = load_backend(pt).infer(batch)
    onnx_out = load_backend(trained_run.with_name("tiny.onnx")).infer(batch)
    assert torch_out.ood_score is None and onnx_out.ood_score is not None
    assert np.allclose(torch_out.probs, onnx_out.probs, atol=1e-3)


def test_fitted_temperature_lowers_validation_nll(trained_run):
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import score_files
    from bmengine.training.calibrate import fit_temperature, nll

    fp32 = trained_run.with_name("tiny.onnx")
    card = load_card(fp32)
    val = _split(trained_run)["val"]
    logits = score_files(load_backend(fp32), val, raw=True).values
    labels = _labels(val)
    t = card.temperature
    assert nll(logits, labels, t) <= nll(logits, labels, 1.0) + 1e-9
    assert t == pytest.approx(fit_temperature(logits, labels), rel=1e-2)
    assert card.calibration["nll_after"] <= card.calibration["nll_before"]


def test_temperature_scaling_fixes_overconfident_logits():
    from bmengine.engine.metrics import expected_calibration_error
    from bmengine.training.calibrate import fit_temperature, softmax_t

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 5000)
    true_logits = rng.standard_normal((5000, 4)) + 1.5 * np.eye(4)[labels]
    y = np.array([rng.choice(4, p=p) for p in softmax_t(true_logits, 1.0)])  # labels drawn from the true probs
    overconfident = true_logits * 4
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(4, rel=0.15)
    assert expected_calibration_error(y, softmax_t(overconfident, t)) < 0.02 < \
        expected_calibration_error(y, softmax_t(overconfident, 1.0))


# -- the card -------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [0, -1.0, float("nan"), float("inf"), "2", True, None])
def test_card_refuses_a_temperature_that_is_not_a_positive_number(tiny_model, temperature):
    data = json.loads(card_path_for(tiny_model).read_text())
    data["calibration"] = {"temperature": temperature}
    with pytest.raises(ModelCardError, match="calibration.temperature"):
        ModelCard.from_dict(data)


@pytest.mark.parametrize("change, field", [
    ({"threshold": float("nan")}, "ood.threshold"), ({"threshold": None}, "ood.threshold"),
    ({"false_flag_rate": 0}, "ood.false_flag_rate"), ({"false_flag_rate": 0.6}, "ood.false_flag_rate"),
    ({"output": ""}, "ood.output"),
    ({"standardise": {"feature_mean": 1.0, "feature_std": 0.0, "energy_mean": -3.0, "energy_std": 1.0}},
     "ood.standardise"),
    ({"standardise": {"feature_mean": 1.0, "feature_std": 2.0, "energy_mean": -3.0}}, "ood.standardise"),
    ({"standardise": [1, 2, 3, 4]}, "ood.standardise"),
])
def test_card_refuses_a_bad_ood_record(tiny_model, change, field):
    data = json.loads(card_path_for(tiny_model).read_text())
    data["ood"] = {"score": "mahalanobis-tied", "output": "ood_score", "threshold": 12.5, "false_flag_rate": 0.05,
                   **change}
    with pytest.raises(ModelCardError, match=field.replace(".", r"\.")):
        ModelCard.from_dict(data)
    data["ood"] = {"score": "mahalanobis-tied", "output": "ood_score", "threshold": 12.5, "false_flag_rate": 0.05}
    data["calibration"] = None  # null = absent
    card = ModelCard.from_dict(data)
    assert card.ood_output == "ood_score" and card.temperature == 1.0
