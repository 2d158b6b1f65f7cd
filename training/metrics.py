"""The classification metrics, for the trainer: they live in :mod:`bmengine.engine.metrics`.

The engine reports them too (``bmengine eval``) and must not import from training; this module
keeps ``from bmengine.training.metrics import ...`` working.
"""

from bmengine.engine.metrics import (
    classification_report,
    confusion_matrix,
    expected_calibration_error,
    lenient_accuracy,
    precision_recall_curve,
    top_k_accuracy,
)

__all__ = [
    "classification_report",
    "confusion_matrix",
    "expected_calibration_error",
    "lenient_accuracy",
    "precision_recall_curve",
    "top_k_accuracy",
]
