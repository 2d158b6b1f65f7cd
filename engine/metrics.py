"""Classification metrics from labels and probabilities (NumPy only).

They live in the engine because ``bmengine eval`` reports them on an engine-only install; the
trainer imports them from here (``bmengine.training.metrics`` re-exports them). The engine never
imports from ``bmengine.training``.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predictions."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def top_k_accuracy(y_true: np.ndarray, probs: np.ndarray, k: int) -> float:
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float(np.mean(np.any(top == y_true[:, None], axis=1)))


def classification_report(y_true: np.ndarray, probs: np.ndarray, classes: list[str] | tuple[str, ...],
                          taxonomy=None) -> dict:
    """Top-1/top-5, macro and per-class precision/recall/F1, confusion matrix, calibration error,
    per-class average precision, and (given a taxonomy) Matek's lenient accuracy.

    Macro averages are over classes present in ``y_true`` (a class absent from the evaluation set
    has no recall to average).
    """
    y_true = np.asarray(y_true)
    n = len(classes)
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n)
    tp = np.diag(cm).astype(float)
    predicted = cm.sum(axis=0).astype(float)
    actual = cm.sum(axis=1).astype(float)
    precision = np.divide(tp, predicted, out=np.zeros(n), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros(n), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(n), where=denom > 0)
    present = actual > 0
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(y_pred == y_true)),
        "top5_accuracy": top_k_accuracy(y_true, probs, 5),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class": {
            c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(actual[i])}
            for i, c in enumerate(classes)
        },
        "per_class_f1": {c: float(f1[i]) for i, c in enumerate(classes)},
        "per_class_average_precision": {  # None (JSON null, not NaN) for a class no crop has: undefined
            c: precision_recall_curve(y_true == i, probs[:, i])["average_precision"] if present[i] else None
            for i, c in enumerate(classes)
        },
        "expected_calibration_error": expected_calibration_error(y_true, probs),
        "lenient_accuracy": lenient_accuracy(y_true, y_pred, classes, taxonomy) if taxonomy else None,
        "confusion_matrix": cm.tolist(),
    }


def lenient_accuracy(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str] | tuple[str, ...], taxonomy) -> float:
    """Matek et al.'s lenient scoring: a prediction of an adjacent maturation stage counts as right."""
    names = np.asarray(classes, dtype=object)
    hits = [taxonomy.is_lenient_match(t, p) for t, p in zip(names[y_true], names[y_pred])]
    return float(np.mean(hits)) if hits else float("nan")


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE (Guo et al. 2017): |accuracy - confidence| averaged over equal-width confidence bins
    ((m-1)/M, m/M], weighted by the share of samples in each bin."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def precision_recall_curve(y_true_binary: np.ndarray, scores: np.ndarray) -> dict:
    """One-vs-rest precision and recall at every distinct score (highest first), and average
    precision ``sum_k (R_k - R_{k-1}) P_k`` over those thresholds, as scikit-learn defines it.

    Tied scores form one threshold: they are accepted or rejected together, so the result does not
    depend on input order (quantised int8 outputs tie often).
    """
    scores = np.asarray(scores, dtype=float)
    order = np.argsort(-scores, kind="stable")
    truth = np.asarray(y_true_binary, dtype=bool)[order]
    ranked = scores[order]
    last_of_tie = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], len(ranked) > 0])  # one per distinct score
    tp = np.cumsum(truth)[last_of_tie]
    fp = np.cumsum(~truth)[last_of_tie]
    positives = int(truth.sum())
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / positives if positives else np.zeros(len(tp), dtype=float)
    steps = np.diff(np.r_[0.0, recall])
    ap = float(np.sum(steps * precision)) if positives else float("nan")
    return {"precision": precision, "recall": recall, "thresholds": ranked[last_of_tie], "average_precision": ap}
