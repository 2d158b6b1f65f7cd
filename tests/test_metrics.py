"""Evaluation metrics against scikit-learn (the reference, a test-only dependency) and by hand:
average precision with tied scores, confusion matrix, macro-F1, calibration error, lenient accuracy."""

import ast
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from bmengine.engine.metrics import (
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    lenient_accuracy,
    precision_recall_curve,
)
from bmengine.engine.taxonomy import get_taxonomy

REPO = Path(__file__).resolve().parents[1]


def _quantised_case(seed: int, n: int = 60, levels: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores on a coarse grid, so many scores tie (as int8 outputs do)."""
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.3
    truth[0] = True  # at least one positive
    scores = np.round((0.4 * truth + rng.random(n)) * levels) / levels
    return truth, scores


def test_average_precision_with_ties_is_sklearns_and_ignores_input_order():
    truth, scores = np.array([1, 0, 1]), np.array([0.9, 0.9, 0.5])
    assert precision_recall_curve(truth, scores)["average_precision"] == pytest.approx(0.5 / 2 + 0.5 * 2 / 3)
    for order in itertools.permutations(range(3)):
        order = list(order)
        assert precision_recall_curve(truth[order], scores[order])["average_precision"] == pytest.approx(7 / 12)


@pytest.mark.parametrize("seed", range(20))
def test_precision_recall_curve_is_sklearns_on_tied_scores(seed):
    truth, scores = _quantised_case(seed)
    curve = precision_recall_curve(truth, scores)
    precision, recall, thresholds = sk.precision_recall_curve(truth, scores)
    # sklearn: increasing thresholds, then a closing (precision 1, recall 0) point without a threshold
    assert curve["thresholds"].tolist() == thresholds[::-1].tolist()
    assert curve["precision"] == pytest.approx(precision[:-1][::-1])
    assert curve["recall"] == pytest.approx(recall[:-1][::-1])
    assert curve["average_precision"] == pytest.approx(sk.average_precision_score(truth, scores))
    shuffled = np.random.default_rng(seed + 100).permutation(len(truth))
    assert precision_recall_curve(truth[shuffled], scores[shuffled])["average_precision"] == pytest.approx(
        curve["average_precision"])


def test_precision_recall_and_average_precision_by_hand():
    curve = precision_recall_curve(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert curve["precision"].tolist() == pytest.approx([1, 0.5, 2 / 3, 0.5])
    assert curve["recall"].tolist() == pytest.approx([0.5, 0.5, 1, 1])
    assert curve["average_precision"] == pytest.approx((1 + 2 / 3) / 2)


def test_average_precision_without_positives_is_undefined():
    assert np.isnan(precision_recall_curve(np.zeros(4, bool), np.array([0.1, 0.2, 0.2, 0.9]))["average_precision"])


def _classification_case(seed: int, n_classes: int = 5, n: int = 80) -> tuple[np.ndarray, np.ndarray]:
    """Labels that miss the last class, probabilities that sometimes predict it (a class with
    predictions but no support) and never predict class 1 (support but no predictions)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes - 1, n)
    logits = rng.normal(size=(n, n_classes)) + 2.0 * np.eye(n_classes)[y]
    logits[:, 1] -= 10
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


@pytest.mark.parametrize("seed", range(5))
def test_confusion_matrix_and_macro_scores_are_sklearns(seed):
    y, probs = _classification_case(seed)
    pred = probs.argmax(axis=1)
    assert (pred == 4).any() and not (y == 4).any() and not (pred == 1).any()
    assert confusion_matrix(y, pred, 5).tolist() == sk.confusion_matrix(y, pred, labels=range(5)).tolist()
    report = classification_report(y, probs, [f"c{i}" for i in range(5)])
    present = np.unique(y)  # macro averages are over the classes the evaluation set holds
    for ours, theirs in (("macro_f1", sk.f1_score), ("macro_precision", sk.precision_score),
                         ("macro_recall", sk.recall_score)):
        assert report[ours] == pytest.approx(theirs(y, pred, labels=present, average="macro", zero_division=0))
    per_class = sk.f1_score(y, pred, labels=range(5), average=None, zero_division=0)
    assert list(report["per_class_f1"].values()) == pytest.approx(per_class.tolist())
    assert report["accuracy"] == pytest.approx(sk.accuracy_score(y, pred))
    assert report["top5_accuracy"] == 1.0
    for i in present:
        assert report["per_class_average_precision"][f"c{i}"] == pytest.approx(
            sk.average_precision_score(y == i, probs[:, i]))


def _ece_by_hand(y: np.ndarray, probs: np.ndarray, n_bins: int) -> float:
    """Guo et al.'s definition written out: bins ((m-1)/M, m/M], a confidence of 0 in the first."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    total = 0.0
    for m in range(1, n_bins + 1):
        members = [i for i, c in enumerate(confidence) if (m - 1) / n_bins < c <= m / n_bins or (m == 1 and c == 0)]
        if members:
            total += len(members) / len(y) * abs(np.mean(correct[members]) - np.mean(confidence[members]))
    return total


def test_ece_on_a_hand_example():
    # bin (0.9, 0.933]: two samples at 0.92 confidence, one right -> |0.5 - 0.92| weighted 2/3
    # bin (0.6, 0.667]: one sample at 0.62, right -> |1 - 0.62| weighted 1/3
    probs = np.array([[0.92, 0.08], [0.92, 0.08], [0.38, 0.62]])
    y = np.array([0, 1, 1])
    expected = 2 / 3 * abs(0.5 - 0.92) + 1 / 3 * abs(1 - 0.62)
    assert expected_calibration_error(y, probs) == pytest.approx(expected)


def test_ece_bins_are_closed_on_the_right():
    """0.6 is the top of (8/15, 9/15]; 0.62 is in the next bin. Together they would give 0.11."""
    probs = np.array([[0.6, 0.4], [0.38, 0.62]])
    y = np.array([0, 0])  # the first is right at 0.6, the second wrong at 0.62
    assert expected_calibration_error(y, probs) == pytest.approx(0.5 * 0.4 + 0.5 * 0.62)


def test_ece_is_zero_when_confidence_is_accuracy_and_one_bin_is_the_gap():
    probs = np.tile([0.8, 0.2], (10, 1))
    y = np.array([0] * 8 + [1] * 2)  # 80% right at 80% confidence
    assert expected_calibration_error(y, probs) == pytest.approx(0.0)
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([1, 1, 1], size=50)
    y = rng.integers(0, 3, 50)
    gap = abs(np.mean(probs.argmax(axis=1) == y) - probs.max(axis=1).mean())
    assert expected_calibration_error(y, probs, n_bins=1) == pytest.approx(gap)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_matches_the_definition_on_quantised_confidences(n_bins):
    """Confidences on a 1/20 grid land on bin edges often: each must go to the bin it closes."""
    rng = np.random.default_rng(n_bins)
    top = rng.integers(8, 21, 200) / 20  # 0.4 .. 1.0
    probs = np.stack([top, 1 - top], axis=1)
    y = (rng.random(200) > top).astype(int)
    assert expected_calibration_error(y, probs, n_bins) == pytest.approx(_ece_by_hand(y, probs, n_bins))


def test_lenient_accuracy_counts_adjacent_maturation_stages():
    tax = get_taxonomy("matek-bone-marrow-21")
    classes = list(tax.classes)
    idx = {c: i for i, c in enumerate(classes)}
    y_true = np.array([idx["NGB"], idx["NGS"], idx["PEB"], idx["BLA"]])
    y_pred = np.array([idx["NGS"], idx["NGS"], idx["EBO"], idx["LYT"]])
    assert lenient_accuracy(y_true, y_pred, classes, tax) == pytest.approx(3 / 4)


def test_report_carries_the_new_figures():
    probs = np.eye(8)[[0, 1, 2, 3, 4, 5, 6, 7, 6]] * 0.9 + 0.0125
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 3])
    tax = get_taxonomy("pbc-blood-8")
    report = classification_report(y, probs, list(tax.classes), taxonomy=tax)
    assert report["accuracy"] == pytest.approx(8 / 9)
    assert report["lenient_accuracy"] == 1.0  # ig called neutrophil: adjacent stages in pbc-blood-8
    assert report["per_class_average_precision"]["platelet"] == 1.0
    assert report["expected_calibration_error"] == pytest.approx(abs(8 / 9 - 0.9125))  # every crop in one bin


def test_a_report_over_some_classes_is_strict_json():
    """A lab's folder holds a few of the model's classes: the others' average precision is undefined,
    and was NaN, which `eval --json` and cards printed and strict JSON readers (jq, browsers) refuse."""
    import json

    probs = np.full((4, 8), 0.02)
    probs[[0, 1, 2, 3], [6, 6, 4, 6]] = 0.86
    report = classification_report(np.array([6, 6, 4, 4]), probs, list(get_taxonomy("pbc-blood-8").classes))
    assert report["per_class_average_precision"]["basophil"] is None
    assert report["per_class_average_precision"]["neutrophil"] == pytest.approx(precision_recall_curve(
        np.array([1, 1, 0, 0], bool), probs[:, 6])["average_precision"])
    json.loads(json.dumps(report, allow_nan=False))  # raises on NaN


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("module", ["engine/metrics.py", "engine/evaluate.py", "engine/outputs/evaluation.py"])
def test_engine_scoring_does_not_import_training(module):
    """Training may use the engine, never the reverse: `bmengine eval` scores on an engine-only install."""
    assert not {m for m in _imported_modules(REPO / module) if m.startswith("bmengine.training")}


def test_training_metrics_are_the_engines():
    from bmengine.engine import metrics as engine_metrics
    from bmengine.training import metrics as training_metrics

    assert training_metrics.classification_report is engine_metrics.classification_report
    assert training_metrics.precision_recall_curve is engine_metrics.precision_recall_curve


def test_eval_writes_confusion_matrix_and_curves(tiny_model, pbc_subset, tmp_path):
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import evaluate_files
    from bmengine.training.dataset import ImageFolder

    data = ImageFolder.scan(pbc_subset)
    report = evaluate_files(load_backend(tiny_model), list(data.files), data.labels, out_dir=tmp_path)
    table = pd.read_csv(tmp_path / "confusion_matrix.csv", index_col=0)
    assert table.to_numpy().tolist() == report["confusion_matrix"] and table.to_numpy().sum() == 96
    for png in ("confusion_matrix.png", "pr_curves.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
