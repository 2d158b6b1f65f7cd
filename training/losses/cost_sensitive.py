"""Cost-sensitive regularisation (Galdran et al., MICCAI 2020), as used by Hu et al. 2025.

loss = CE(logits, y) + lambda * sum_j M[y, j] * softmax(logits)_j

M is a cost matrix with a zero diagonal: each row says how bad it is to put probability on each
wrong class. By default M[i, j] = w_i for i != j, with w the normalised inverse square root of
the class frequency, so that mistakes on rare classes cost more (the long tail of cell types).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bmengine.training.losses.registry import LOSSES


def default_cost_matrix(class_counts: np.ndarray) -> np.ndarray:
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    weights = 1.0 / np.sqrt(counts)
    weights = weights / weights.mean()
    n = len(counts)
    return weights[:, None] * (np.ones((n, n)) - np.eye(n))


@LOSSES.register("cost_sensitive")
class CostSensitiveLoss(nn.Module):
    def __init__(self, class_counts: np.ndarray, weight: float = 1.0, cost_matrix: list | np.ndarray | None = None):
        super().__init__()
        matrix = default_cost_matrix(class_counts) if cost_matrix is None else np.asarray(cost_matrix, dtype=np.float64)
        n = len(class_counts)
        if matrix.shape != (n, n):
            raise ValueError(f"cost matrix must be {n}x{n}, got {matrix.shape}")
        self.register_buffer("cost_matrix", torch.as_tensor(matrix, dtype=torch.float32))
        self.weight = weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        probs = logits.softmax(dim=1)
        penalty = (self.cost_matrix[target] * probs).sum(dim=1).mean()
        return F.cross_entropy(logits, target) + self.weight * penalty
