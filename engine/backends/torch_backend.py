"""PyTorch eager on the CPU (or CUDA where present): runs a trainer checkpoint exported as ``.pt``.

Needs the ``[train]`` extra; useful to compare a checkpoint with its ONNX export.
"""

from __future__ import annotations

import numpy as np

from bmengine.engine.backends.base import Backend, ModelIO


class TorchBackend(Backend):
    name = "torch"
    device = "cpu"

    def __init__(self, model_path, card, options):
        super().__init__(model_path, card, options)
        import torch

        from bmengine.training.models import ModelSpec, create_model

        torch.set_num_threads(options.threads)
        state = torch.load(model_path, map_location="cpu", weights_only=False)
        self.model = create_model(ModelSpec(**state["model_spec"])).eval()
        self.model.load_state_dict(state["model"])
        self.model = self.model.to(memory_format=torch.channels_last)
        self._torch = torch
        self._num_classes = state["model_spec"]["num_classes"]

    def io(self) -> ModelIO:
        return ModelIO(None, self._num_classes)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).contiguous(memory_format=torch.channels_last)
            return self.model(x).float().softmax(dim=1).numpy()
