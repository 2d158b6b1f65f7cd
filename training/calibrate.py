"""Temperature scaling (Guo et al. 2017): one scalar T, fitted on the validation split's logits at
export by minimising the negative log-likelihood; the card stores it and every backend turns
logits into probabilities as softmax(logits / T). T changes no prediction (argmax is unchanged),
only how confident the probabilities are."""

from __future__ import annotations

import numpy as np

from bmengine.engine.metrics import expected_calibration_error

T_MIN, T_MAX = 0.05, 20.0


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true class under softmax(logits / T)."""
    lp = log_softmax(np.asarray(logits, dtype=np.float64) / temperature)
    return float(-lp[np.arange(len(lp)), np.asarray(labels)].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """argmin_T NLL, searched over log T in [log 0.05, log 20] (a 1-D bounded search)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    found = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))),
                            bounds=(np.log(T_MIN), np.log(T_MAX)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def softmax_t(logits: np.ndarray, temperature: float) -> np.ndarray:
    return np.exp(log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def calibration_record(logits: np.ndarray, labels: np.ndarray, fitted_on: str) -> dict:
    """The card's ``calibration`` field: T and what it did to ECE and NLL on the data it was fit on."""
    labels = np.asarray(labels)
    t = fit_temperature(logits, labels)
    return {
        "method": "temperature",
        "temperature": round(t, 4),
        "ece_before": round(expected_calibration_error(labels, softmax_t(logits, 1.0)), 5),
        "ece_after": round(expected_calibration_error(labels, softmax_t(logits, round(t, 4))), 5),
        "nll_before": round(nll(logits, labels, 1.0), 5),
        "nll_after": round(nll(logits, labels, round(t, 4)), 5),
        "fitted_on": fitted_on,
    }
