"""Issue 10, items 3 and 5: intervals that carry the classifier's error, unknown crops, domain warnings."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bmengine.engine.outputs.adjusted import adjusted_proportions, em_proportions
from bmengine.engine.outputs.differential import summarize_slide
from bmengine.engine.outputs.domain import domain_warning
from bmengine.engine.outputs.stats import clopper_pearson
from bmengine.engine.taxonomy import get_taxonomy

PBC = get_taxonomy("pbc-blood-8")


def _noisy_rates(n: int = 4, error: float = 0.15) -> np.ndarray:
    """A classifier that sends ``error`` of every class to its neighbour."""
    return (1 - error) * np.eye(n) + error * np.roll(np.eye(n), 1, axis=1)


def test_em_recovers_the_true_mix_from_noiseless_counts():
    rates = _noisy_rates()
    truth = np.array([0.5, 0.3, 0.15, 0.05])
    counts = 10_000 * (truth @ rates)
    assert np.allclose(em_proportions(counts, rates, steps=2000), truth, atol=1e-3)


def test_a_perfect_classifier_keeps_the_observed_share():
    confusion = np.diag([400, 300, 200, 100])
    estimate, low, high = adjusted_proportions(np.array([60, 30, 10, 0]), confusion, n_bootstrap=400)
    assert np.allclose(estimate, [0.6, 0.3, 0.1, 0.0], atol=1e-6)
    cp_low, cp_high = clopper_pearson(60, 100)
    assert abs(low[0] - cp_low) < 0.05 and abs(high[0] - cp_high) < 0.05


def test_coverage_on_synthetic_patients_beats_sampling_only_intervals():
    """A classifier with 15% error per class: Clopper-Pearson on predicted counts misses the truth
    often; the adjusted interval covers it at least 90% of the time."""
    rng = np.random.default_rng(3)
    rates = _noisy_rates()
    inside, inside_cp = [], []
    for trial in range(40):
        validation = np.stack([rng.multinomial(300, row) for row in rates])  # the card's confusion matrix
        p = rng.dirichlet(np.ones(4))
        true_counts = rng.multinomial(200, p)
        predicted = sum(rng.multinomial(k, rates[i]) for i, k in enumerate(true_counts))
        _, low, high = adjusted_proportions(predicted, validation, n_bootstrap=300, seed=trial)
        inside += list((low <= p) & (p <= high))
        cp = np.array([clopper_pearson(k, 200) for k in predicted])
        inside_cp += list((cp[:, 0] <= p) & (p <= cp[:, 1]))
    assert np.mean(inside) >= 0.9, np.mean(inside)
    assert np.mean(inside_cp) < np.mean(inside) - 0.1


def _cells(flags: list[str]) -> pd.DataFrame:
    n = len(flags)
    cells = pd.DataFrame({"predicted": ["neutrophil"] * (n - 1) + [None], "label": [None] * n,
                          "error": [None] * (n - 1) + ["decode failed"], "qc_flags": flags})
    for c in PBC.classes:
        cells[f"prob_{c}"] = 1.0 if c == "neutrophil" else 0.0
    return cells


def test_unknown_crops_are_counted_apart_and_the_adjusted_columns_exist():
    row = summarize_slide("s", _cells(["", "unknown", "garbled;unknown", "garbled", "", "", ""]), PBC,
                          confusion=np.eye(8) * 50)
    assert row["n_unknown"] == 2 and abs(row["pct_unknown"] - 100 * 2 / 6) < 1e-9
    assert row["n_cells"] == 3 and row["n_flagged"] == 3
    assert abs(row["adj_pct_neutrophil"] - 100) < 1e-6 and row["adj_ci_high_neutrophil"] <= 100 + 1e-9
    plain = summarize_slide("s", _cells(["", "", ""]), PBC)  # no confusion matrix: NaN, never invented
    assert np.isnan(plain["adj_pct_neutrophil"]) and plain["n_unknown"] == 0


def test_a_domain_warning_needs_far_more_unknown_crops_than_expected():
    assert domain_warning(10, 200, 0.05) == ""  # 5%: what the model flags on its own validation crops
    assert domain_warning(18, 200, 0.05) == ""  # 9%: still a plausible draw
    sentence = domain_warning(60, 200, 0.05)
    assert "30%" in sentence and "60 of 200" in sentence and "5%" in sentence
    assert domain_warning(60, 200, None) == "" and domain_warning(0, 0, 0.05) == ""
