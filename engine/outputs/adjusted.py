"""Differential percentages that carry the classifier's own error, not only sampling error.

The Clopper-Pearson interval treats every predicted class as the truth. A classifier that calls 2%
of neutrophils ``ig`` inflates the IG count of every slide, and no amount of counting fixes that.
Here the model's validation confusion matrix ``M`` (rows: true class, columns: predicted; from the
card) says how true classes turn into predictions: ``q = Mᵀ p`` for true proportions ``p``.

- **Point estimate** — the maximum-likelihood ``p`` given the slide's predicted counts and ``M``,
  found by EM (the classic misclassification EM; it stays on the simplex, unlike inverting ``M``).
- **Interval** — a bootstrap over both sources of error: each replicate draws a confusion matrix
  (every row from a Dirichlet posterior of the validation counts in that row, Jeffreys prior) and
  a slide (multinomial counts from the fitted ``q``), refits ``p``, and the 2.5/97.5 percentiles
  of the replicates are the 95% interval.

See docs/differential.md, section 4, for the method and its measured coverage.
"""

from __future__ import annotations

import numpy as np

N_BOOTSTRAP = 1000
EM_STEPS = 300  # at most; EM stops earlier once no share moves by more than EM_TOLERANCE
EM_TOLERANCE = 1e-9


def _row_normalised(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(axis=-1, keepdims=True)
    return confusion / np.where(totals > 0, totals, 1.0)


def em_proportions(counts: np.ndarray, rates: np.ndarray, steps: int = EM_STEPS,
                   tolerance: float = EM_TOLERANCE) -> np.ndarray:
    """ML true-class proportions for predicted ``counts`` (…, C) under misclassification ``rates``
    (…, C, C), rows true, columns predicted; batched over leading axes."""
    counts = np.asarray(counts, dtype=np.float64)
    observed = counts / np.maximum(counts.sum(axis=-1, keepdims=True), 1.0)
    p = np.full(counts.shape, 1.0 / counts.shape[-1])
    for _ in range(steps):
        q = np.einsum("...i,...ij->...j", p, rates)
        ratio = np.divide(observed, q, out=np.zeros_like(q), where=q > 0)
        updated = p * np.einsum("...ij,...j->...i", rates, ratio)
        updated /= np.maximum(updated.sum(axis=-1, keepdims=True), 1e-300)
        moved = np.abs(updated - p).max(initial=0.0)
        p = updated
        if moved < tolerance:  # every replicate has settled
            break
    return p


def dirichlet_rows(rng: np.random.Generator, alphas: np.ndarray, n: int) -> np.ndarray:
    """``n`` draws of a matrix whose every row is Dirichlet(that row of ``alphas``): (n, C, C).
    Normalised gamma draws, all at once (numpy's ``dirichlet`` takes one alpha vector per call)."""
    gamma = rng.standard_gamma(np.broadcast_to(alphas, (n, *alphas.shape)))
    return gamma / np.maximum(gamma.sum(axis=-1, keepdims=True), 1e-300)


def adjusted_proportions(counts: np.ndarray, confusion: np.ndarray, confidence: float = 0.95,
                         n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
                         base: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(estimate, low, high) of the true share of every class, each shape (C,).

    ``counts``: the slide's predicted counts per class; ``confusion``: validation counts (C, C).
    With a boolean ``base`` mask, shares are per base cell (``p_c / Σ_base p``: the differential's
    units, base classes summing to 1, excluded classes per base cell) and the interval is taken
    over that ratio. Seeded, so the same slide always gets the same interval.
    """
    counts = np.asarray(counts, dtype=np.int64)
    confusion = np.asarray(confusion, dtype=np.float64)
    n = int(counts.sum())
    estimate = em_proportions(counts, _row_normalised(confusion))
    if n == 0:
        nan = np.full(counts.shape, np.nan)
        return nan, nan, nan
    rng = np.random.default_rng(seed)
    drawn = dirichlet_rows(rng, confusion + 0.5, n_bootstrap)
    fitted_q = estimate @ _row_normalised(confusion)
    slides = rng.multinomial(n, fitted_q / fitted_q.sum(), size=n_bootstrap)
    replicates = em_proportions(slides, drawn)
    if base is not None:
        base = np.asarray(base, dtype=bool)
        estimate = estimate / max(estimate[base].sum(), 1e-300)
        replicates = replicates / np.maximum(replicates[:, base].sum(axis=1, keepdims=True), 1e-300)
    alpha = 1.0 - confidence
    low, high = np.quantile(replicates, [alpha / 2, 1 - alpha / 2], axis=0)
    return estimate, low, high
