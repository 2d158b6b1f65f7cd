"""Focal loss (Lin et al., ICCV 2017) and its class-balanced form (Cui et al., CVPR 2019).

focal:     -alpha_y (1 - p_y)^gamma log p_y; alpha per class (inverse frequency, normalised to
           mean 1) or a scalar.
cb_focal:  the same with alpha_y = (1 - beta) / (1 - beta^n_y), the inverse "effective number"
           of samples of class y, normalised to sum to the number of classes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bmengine.training.losses.registry import LOSSES


def effective_number_weights(class_counts: np.ndarray, beta: float) -> np.ndarray:
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights / weights.sum() * len(counts)


def inverse_frequency_weights(class_counts: np.ndarray) -> np.ndarray:
    counts = np.maximum(np.asarray(class_counts, dtype=np.float64), 1.0)
    weights = 1.0 / counts
    return weights / weights.mean()


class _Focal(nn.Module):
    def __init__(self, alpha: np.ndarray, gamma: float):
        super().__init__()
        self.register_buffer("alpha", torch.as_tensor(alpha, dtype=torch.float32))
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
        p = log_p.exp()
        return (-self.alpha[target] * (1 - p).pow(self.gamma) * log_p).mean()


@LOSSES.register("focal")
class FocalLoss(_Focal):
    def __init__(self, class_counts: np.ndarray, gamma: float = 2.0, alpha: float | str = "inverse_frequency"):
        n = len(class_counts)
        weights = inverse_frequency_weights(class_counts) if alpha == "inverse_frequency" else np.full(n, float(alpha))
        super().__init__(weights, gamma)


@LOSSES.register("cb_focal")
class ClassBalancedFocalLoss(_Focal):
    def __init__(self, class_counts: np.ndarray, beta: float = 0.999, gamma: float = 2.0):
        super().__init__(effective_number_weights(class_counts, beta), gamma)
