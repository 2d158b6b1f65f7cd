"""Batch index samplers: shuffled epochs, or class-balanced batches (Wang et al.'s sampler)."""

from __future__ import annotations

import numpy as np


def shuffled_batches(labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(len(labels))
    n_batches = len(order) // batch_size
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]


def balanced_batches(labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Each batch holds the same number of images of every class (rare classes are re-drawn).

    An epoch has as many batches as a shuffled epoch would, so schedules stay comparable.
    """
    classes = np.unique(labels)
    per_class = max(1, batch_size // len(classes))
    n_batches = len(labels) // batch_size
    pools = {c: np.flatnonzero(labels == c) for c in classes}
    batches = []
    for _ in range(n_batches):
        picks = [rng.choice(pools[c], size=per_class, replace=len(pools[c]) < per_class) for c in classes]
        batches.append(rng.permutation(np.concatenate(picks)))
    return batches


SAMPLERS = {"shuffle": shuffled_batches, "balanced": balanced_batches}
