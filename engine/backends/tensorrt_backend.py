"""TensorRT engines (``.plan``) on an NVIDIA GPU; the batch arrives in device memory from DALI.

Needs the ``[gpu]`` extra (tensorrt, cuda-python) and a GPU. In the decode thread, each DALI
batch is copied device-to-device into one of a ring of input buffers (``copy_to_external`` on our
own stream, ordered after DALI's work), so DALI may reuse its buffers while earlier batches wait;
the engine then runs on that buffer with ``execute_async_v3`` and only the (N, C) logits (and the
(N,) OOD score, for a model whose card names one) come back to the host.
"""

from __future__ import annotations

import numpy as np

from dataclasses import dataclass

from bmengine.engine.backends.base import Backend, ModelIO, Outputs
from bmengine.engine.model.card import ModelCardError

#: input buffers in the ring: batches decoded ahead (2) + the one being inferred + one spare
RING = 4


@dataclass(frozen=True)
class StagedBatch:
    slot: int
    n: int


def _cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:  # older cuda-python layout
        from cuda import cudart  # type: ignore[no-redef]
    return cudart


def _check(result):
    """cuda-python returns (err, *values); raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "gpu"

    def __init__(self, model_path, card, options):
        super().__init__(model_path, card, options)
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise ModelCardError(
                f"{model_path}: TensorRT is not installed ({exc}); install the [gpu] extra, "
                "or run the model's .onnx export instead"
            ) from None
        self.cudart = _cudart()
        _check(self.cudart.cudaSetDevice(options.device_id))
        self._trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if self.engine is None:
            raise ModelCardError(f"{model_path}: TensorRT could not deserialize this engine "
                                 "(built for another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        # outputs by name: the OOD score where the card names it, the logits are the other one
        self.ood_name = card.ood_output if card.ood_output in self.output_names else None
        self.output_name = ("logits" if "logits" in self.output_names
                            else next(n for n in self.output_names if n != self.ood_name))
        self.stream = _check(self.cudart.cudaStreamCreate())  # inference
        self.copy_stream = _check(self.cudart.cudaStreamCreate())  # staging, in the decode thread
        n, crop = options.max_batch_size, card.preprocessing.crop
        self.num_classes = int(self.engine.get_tensor_shape(self.output_name)[-1])
        self._in_bytes = n * 3 * crop * crop * 4
        self._out_bytes = n * self.num_classes * 4
        self.d_inputs = [_check(self.cudart.cudaMalloc(self._in_bytes)) for _ in range(RING)]
        self.d_output = _check(self.cudart.cudaMalloc(self._out_bytes))
        self.d_ood = _check(self.cudart.cudaMalloc(n * 4)) if self.ood_name else None
        self._next_slot = 0
        self.context.set_tensor_address(self.output_name, int(self.d_output))
        if self.ood_name:
            self.context.set_tensor_address(self.ood_name, int(self.d_ood))
        self._spare = []  # outputs the card does not use still need an address to be written to
        for other in sorted(set(self.output_names) - {self.output_name, self.ood_name}):
            shape = self.engine.get_tensor_shape(other)
            per_item = int(np.prod([max(int(d), 1) for d in shape[1:]]))
            size = n * per_item * np.dtype(trt.nptype(self.engine.get_tensor_dtype(other))).itemsize
            self._spare.append(_check(self.cudart.cudaMalloc(size)))
            self.context.set_tensor_address(other, int(self._spare[-1]))

    def io(self) -> ModelIO:
        shape = self.engine.get_tensor_shape(self.input_name)
        size = int(shape[-1]) if int(shape[-1]) > 0 else None
        return ModelIO(size, self.num_classes, self.output_names)

    def stage(self, batch) -> StagedBatch:
        """Copy a decoded batch into the next ring buffer and wait for the copy (decode thread)."""
        cudart = self.cudart
        n = int(batch.shape()[0]) if callable(getattr(batch, "shape", None)) else int(batch.shape[0])
        if n > self.options.max_batch_size:
            raise ValueError(f"batch of {n} exceeds the engine's max batch {self.options.max_batch_size}")
        slot, self._next_slot = self._next_slot, (self._next_slot + 1) % RING
        target = int(self.d_inputs[slot])
        if hasattr(batch, "copy_to_external"):  # DALI TensorGPU: device-to-device, ordered after DALI
            batch.copy_to_external(target, cuda_stream=int(self.copy_stream))
        else:  # a host array (e.g. parity checks against ONNX Runtime)
            host = np.ascontiguousarray(batch, dtype=np.float32)
            _check(cudart.cudaMemcpyAsync(target, host.ctypes.data, host.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.copy_stream))
        _check(cudart.cudaStreamSynchronize(self.copy_stream))
        return StagedBatch(slot, n)

    def forward(self, batch) -> Outputs:
        cudart = self.cudart
        staged = batch if isinstance(batch, StagedBatch) else self.stage(batch)
        n, crop = staged.n, self.card.preprocessing.crop
        self.context.set_tensor_address(self.input_name, int(self.d_inputs[staged.slot]))
        self.context.set_input_shape(self.input_name, (n, 3, crop, crop))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError(f"{self.model_path}: TensorRT execution failed")
        out = np.empty((n, self.num_classes), dtype=np.float32)
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, int(self.d_output), out.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        ood = None
        if self.ood_name:
            ood = np.empty((n,), dtype=np.float32)
            _check(cudart.cudaMemcpyAsync(ood.ctypes.data, int(self.d_ood), ood.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return Outputs(out, ood)

    def close(self) -> None:
        for ptr in [*getattr(self, "d_inputs", []), getattr(self, "d_output", None), getattr(self, "d_ood", None),
                    *getattr(self, "_spare", [])]:
            if ptr is not None:
                self.cudart.cudaFree(ptr)
        for name in ("stream", "copy_stream"):
            if getattr(self, name, None) is not None:
                self.cudart.cudaStreamDestroy(getattr(self, name))
                setattr(self, name, None)
        self.d_inputs, self.d_output, self.d_ood, self._spare = [], None, None, []
