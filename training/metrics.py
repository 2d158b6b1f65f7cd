"""Classification metrics from labels and probabilities (NumPy only, shared by trainer and engine)."""

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
        "per_class_average_precision": {
            c: precision_recall_curve(y_true == i, probs[:, i])["average_precision"] for i, c in enumerate(classes)
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
    """ECE (Guo et al. 2017): |accuracy - confidence| averaged over equal-width confidence bins,
    weighted by the share of samples in each bin."""
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
    """One-vs-rest precision/recall at every distinct score, and average precision
    (sum of precision at each true positive, divided by the number of positives)."""
    order = np.argsort(-scores, kind="stable")
    truth = np.asarray(y_true_binary, dtype=bool)[order]
    tp = np.cumsum(truth)
    fp = np.cumsum(~truth)
    positives = int(truth.sum())
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / positives if positives else np.zeros_like(tp, dtype=float)
    ap = float(precision[truth].sum() / positives) if positives else float("nan")
    return {"precision": precision, "recall": recall, "average_precision": ap}
