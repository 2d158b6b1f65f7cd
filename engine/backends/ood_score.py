"""The out-of-distribution score the card's threshold applies to.

A model's graph computes one OOD output: the Mahalanobis distance of its penultimate features to
the nearest training class (training/ood.py). That distance is what notices another lab's slides
(with the shipped default it flagged 43 of 44 Matek marrow crops, 62% of cellavision_blog and 92%
of tecom; on a held-out-class proxy the energy alone flagged none of the Matek crops), but within the
training lab an unseen class sits close to a seen one in feature space: on the held-out-class
runs its AUROC is 0.80, below the logits' energy score (0.86). The two fail on different crops,
so a card may ask for their sum, each standardised on the model's own validation split:

    score = (mahalanobis - m_f) / s_f + (energy - m_e) / s_e,    energy = -logsumexp(logits)

(held-out-class AUROC 0.87; benchmarks/results/open-set.md). The constants live in the card
(``ood.standardise``), fitted per precision at export, and every runtime gets the same score
because :meth:`Backend.infer` applies it, as it applies the temperature. A card without them
scores with the graph's output alone, as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: ``ood.score`` of a card whose threshold applies to the standardised sum
COMBINED_SCORE = "mahalanobis+energy"


def energy(logits: np.ndarray) -> np.ndarray:
    """-logsumexp of the raw logits (temperature 1): higher = flatter = less like any class."""
    x = np.asarray(logits, dtype=np.float64)
    top = x.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(x - top).sum(axis=1)))


@dataclass(frozen=True)
class Standardiser:
    """Mean and standard deviation of each part on the validation split."""

    feature_mean: float
    feature_std: float
    energy_mean: float
    energy_std: float

    @classmethod
    def fit(cls, feature_scores: np.ndarray, logits: np.ndarray) -> "Standardiser":
        f, e = np.asarray(feature_scores, dtype=np.float64), energy(logits)
        return cls(float(f.mean()), float(max(f.std(), 1e-12)), float(e.mean()), float(max(e.std(), 1e-12)))

    @classmethod
    def from_record(cls, record: dict) -> "Standardiser":
        return cls(**{k: float(record[k]) for k in ("feature_mean", "feature_std", "energy_mean", "energy_std")})

    def as_record(self) -> dict:
        """Full precision: the threshold sits on one validation crop's score, and rounded constants
        would move that crop across it."""
        return asdict(self)

    def combine(self, feature_scores: np.ndarray, logits: np.ndarray) -> np.ndarray:
        f = (np.asarray(feature_scores, dtype=np.float64) - self.feature_mean) / self.feature_std
        e = (energy(logits) - self.energy_mean) / self.energy_std
        return (f + e).astype(np.float32)


def score_for_card(ood: dict | None, graph_score: np.ndarray | None, logits: np.ndarray) -> np.ndarray | None:
    """The score the card's threshold applies to, from a runtime's raw outputs."""
    if graph_score is None or not ood or "standardise" not in ood:
        return graph_score
    return Standardiser.from_record(ood["standardise"]).combine(graph_score, logits)
