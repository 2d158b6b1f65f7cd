"""A running average of the weights over the last part of training (SWA, Izmailov et al., UAI 2018;
dense averaging at every step as in SWAD, Cha et al., NeurIPS 2021).

Averaging the weights a run visits late in training lands in a flatter part of the loss than any one
of them: the averaged network generalises better, in its own lab and (SWAD's finding) in labs it
never saw, at no cost at inference. Batch-norm running statistics cannot be averaged meaningfully,
so they are measured again on training batches once the average is in place.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn


class WeightAverage:
    """The mean of every floating-point tensor of a model's state, updated one step at a time."""

    def __init__(self, model: nn.Module) -> None:
        self.mean = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        self.count = 1

    def update(self, model: nn.Module) -> None:
        self.count += 1
        for key, value in model.state_dict().items():
            if key in self.mean:
                self.mean[key].add_(value.detach().float() - self.mean[key], alpha=1.0 / self.count)

    def to_state(self) -> dict:
        return {"count": self.count, "mean": {k: v.to("cpu", copy=True) for k, v in self.mean.items()}}

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str = "cpu") -> "WeightAverage":
        """Read back from a checkpoint, onto the device the model trains on."""
        average = cls.__new__(cls)
        average.mean = {k: v.float().to(device, copy=True) for k, v in state["mean"].items()}
        average.count = int(state["count"])
        return average

    def apply_to(self, model: nn.Module) -> None:
        """Put the averaged weights into ``model`` (integer tensors, e.g. step counters, stay as they are)."""
        own = model.state_dict()
        missing = set(self.mean) - set(own)
        if missing:
            raise ValueError(f"the weight average holds layers the model lacks (e.g. {sorted(missing)[:3]})")
        model.load_state_dict({**own, **{k: v.to(own[k].dtype) for k, v in self.mean.items()}})


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recompute_batch_norm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Measure every batch-norm layer's running mean and variance afresh as the exact average over
    ``batches`` (already normalised model inputs); returns the number of images seen. Other layers
    run in eval mode, so dropout and the like change nothing."""
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    was_training = model.training
    model.eval()
    momenta = {}
    for layer in layers:
        layer.reset_running_stats()
        momenta[layer] = layer.momentum
        layer.momentum = None  # cumulative average instead of an exponential one
        layer.train()
    seen = 0
    for batch in batches:
        model(batch)
        seen += batch.shape[0]
    for layer in layers:
        layer.momentum = momenta[layer]
    model.train(was_training)
    return seen
