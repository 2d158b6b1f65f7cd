"""Evaluation metrics by hand: lenient accuracy, calibration error, precision-recall, figures."""

import numpy as np
import pandas as pd
import pytest

from bmengine.engine.taxonomy import get_taxonomy
from bmengine.training.metrics import (
    classification_report,
    expected_calibration_error,
    lenient_accuracy,
    precision_recall_curve,
)


def test_lenient_accuracy_counts_adjacent_maturation_stages():
    tax = get_taxonomy("matek-bone-marrow-21")
    classes = list(tax.classes)
    idx = {c: i for i, c in enumerate(classes)}
    y_true = np.array([idx["NGB"], idx["NGS"], idx["PEB"], idx["BLA"]])
    y_pred = np.array([idx["NGS"], idx["NGS"], idx["EBO"], idx["LYT"]])
    assert lenient_accuracy(y_true, y_pred, classes, tax) == pytest.approx(3 / 4)


def test_ece_on_a_hand_example():
    # bin (0.9, 0.933]: two samples at 0.92 confidence, one right -> |0.5 - 0.92| weighted 2/3
    # bin (0.6, 0.667]: one sample at 0.62, right -> |1 - 0.62| weighted 1/3
    probs = np.array([[0.92, 0.08], [0.92, 0.08], [0.38, 0.62]])
    y = np.array([0, 1, 1])
    expected = 2 / 3 * abs(0.5 - 0.92) + 1 / 3 * abs(1 - 0.62)
    assert expected_calibration_error(y, probs) == pytest.approx(expected)


def test_precision_recall_and_average_precision_by_hand():
    curve = precision_recall_curve(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert curve["precision"].tolist() == pytest.approx([1, 0.5, 2 / 3, 0.5])
    assert curve["recall"].tolist() == pytest.approx([0.5, 0.5, 1, 1])
    assert curve["average_precision"] == pytest.approx((1 + 2 / 3) / 2)


def test_report_carries_the_new_figures():
    probs = np.eye(8)[[0, 1, 2, 3, 4, 5, 6, 7, 6]] * 0.9 + 0.0125
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 3])
    tax = get_taxonomy("pbc-blood-8")
    report = classification_report(y, probs, list(tax.classes), taxonomy=tax)
    assert report["accuracy"] == pytest.approx(8 / 9)
    assert report["lenient_accuracy"] == 1.0  # ig called neutrophil: adjacent stages in pbc-blood-8
    assert report["per_class_average_precision"]["platelet"] == 1.0
    assert 0 <= report["expected_calibration_error"] <= 1


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
