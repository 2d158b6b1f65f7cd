"""PyTorch eager on the CPU (or CUDA where present): runs a trainer checkpoint exported as ``.pt``.

Needs the ``[train]`` extra; useful to compare a checkpoint with its ONNX export.

A ``.pt`` is a pickle, and unpickling runs whatever the file names; its card's sha256 proves
nothing, because whoever sends the model writes the card. So the file is read with torch's
``weights_only`` unpickler (tensors and plain data only) and the architecture is built from the
card, never from objects inside the file.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bmengine.engine.backends.base import Backend, ModelIO, Outputs
from bmengine.engine.model.card import ModelCard, ModelCardError

if TYPE_CHECKING:
    from bmengine.engine.model.networks import ModelSpec


def load_weights(model_path: Path) -> dict:
    """The state dict in a ``.pt`` (a trainer checkpoint's ``model``, or a bare state dict), read
    with ``weights_only=True``; a file holding Python objects is refused, not unpickled."""
    import torch

    from bmengine.engine.model.torch_file import load_plain_data

    state = load_plain_data(model_path, noun="file")
    weights = state.get("model", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise ModelCardError(f"{model_path}: holds no state dict (expected tensors, or a checkpoint's 'model')")
    return weights


def spec_from_card(card: ModelCard, model_path: Path) -> "ModelSpec":
    """The ``ModelSpec`` the card's ``architecture`` names (its extra keys, e.g. loss, are ignored)."""
    from bmengine.engine.model.networks import ModelSpec  # noqa: F811

    arch = card.architecture
    if "backbone" not in arch:
        raise ModelCardError(f"{model_path}: its card's architecture names no backbone")
    known = {f.name for f in fields(ModelSpec)}
    spec = {k: v for k, v in arch.items() if k in known}
    spec.setdefault("num_classes", len(card.classes))
    return ModelSpec(**spec)


class TorchBackend(Backend):
    """Runs the bare network: it reports no OOD score (``Inference.ood_score`` is None, so no crop
    is flagged ``unknown``), even where the card beside the ``.pt`` has an ``ood`` record — the
    Mahalanobis head lives in the exported ONNX graph, not in the checkpoint. The card's
    temperature is applied (by the base class) as for every backend.

    Where ``torch.cuda.is_available()`` it runs on GPU ``options.device_id`` and says so
    (``device = "gpu"``): the pipeline then decodes with nvJPEG and returns each batch on this
    backend's stream (``input_stream``), ``stage`` takes a private copy of DALI's buffer there
    (DLPack, the stream-ordered protocol, as engine/qc/on_gpu.py), and ``forward`` runs on the
    same stream, so nothing waits on the host but the copy of the logits back. Host arrays (tests,
    ``predict_files``) are copied to the GPU. Elsewhere it runs on the CPU with ``options.threads``.
    """

    name = "torch"
    device = "cpu"

    def __init__(self, model_path, card, options):
        super().__init__(model_path, card, options)
        import torch

        from bmengine.engine.model.networks import create_model

        weights = load_weights(self.model_path)
        spec = spec_from_card(card, self.model_path)
        try:
            self.model = create_model(spec).eval()
            self.model.load_state_dict(weights)
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelCardError(
                f"{self.model_path}: weights do not fit the architecture its card names ({spec}): "
                f"{str(exc).splitlines()[0]}"
            ) from None
        self._torch = torch
        self._num_classes = spec.num_classes
        self._stream = None
        if torch.cuda.is_available():
            if options.device_id >= torch.cuda.device_count():
                raise ModelCardError(f"{self.model_path}: no GPU {options.device_id} (this machine has "
                                     f"{torch.cuda.device_count()})")
            self.device = "gpu"
            self.torch_device = torch.device("cuda", options.device_id)
            self._stream = torch.cuda.Stream(self.torch_device)
        else:
            torch.set_num_threads(options.threads)
            self.torch_device = torch.device("cpu")
        self.model = self.model.to(self.torch_device, memory_format=torch.channels_last)

    @property
    def input_stream(self) -> int | None:
        """The stream DALI should return its outputs on (a raw CUDA stream handle), None on the CPU."""
        return self._stream.cuda_stream if self._stream is not None else None

    def io(self) -> ModelIO:
        return ModelIO(None, self._num_classes)

    def _stream_context(self):
        from contextlib import nullcontext

        return self._torch.cuda.stream(self._stream) if self._stream is not None else nullcontext()

    def stage(self, batch):
        """GPU: a private copy of DALI's batch (DALI reuses its buffers on its next run), queued on
        this backend's stream; the CPU and host arrays need none."""
        if self._stream is None or isinstance(batch, np.ndarray):
            return batch
        torch = self._torch
        with self._stream_context():
            return torch.from_dlpack(batch).clone(memory_format=torch.channels_last)

    def forward(self, batch) -> Outputs:
        torch = self._torch
        with torch.inference_mode(), self._stream_context():
            if isinstance(batch, torch.Tensor):
                x = batch
            elif isinstance(batch, np.ndarray):
                x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.torch_device)
            else:  # an unstaged DALI GPU batch
                x = self.stage(batch)
            x = x.contiguous(memory_format=torch.channels_last)
            return Outputs(self.model(x).float().cpu().numpy(), None)
