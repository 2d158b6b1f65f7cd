"""TensorRT engines (``.plan``) on an NVIDIA GPU; the batch arrives in device memory from DALI.

Needs the ``[gpu]`` extra (tensorrt, cuda-python) and a GPU. The DALI batch is copied device-to-
device into the engine's input binding on our own CUDA stream (``copy_to_external`` orders it
after DALI's work), the engine runs with ``execute_async_v3``, and only the (N, C) probabilities
come back to the host.
"""

from __future__ import annotations

import numpy as np

from bmengine.engine.backends.base import Backend, ModelIO, softmax
from bmengine.engine.model.card import ModelCardError


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
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = _check(self.cudart.cudaStreamCreate())
        n, crop = options.max_batch_size, card.preprocessing.crop
        self.num_classes = int(self.engine.get_tensor_shape(self.output_name)[-1])
        self._in_bytes = n * 3 * crop * crop * 4
        self._out_bytes = n * self.num_classes * 4
        self.d_input = _check(self.cudart.cudaMalloc(self._in_bytes))
        self.d_output = _check(self.cudart.cudaMalloc(self._out_bytes))
        self.context.set_tensor_address(self.input_name, int(self.d_input))
        self.context.set_tensor_address(self.output_name, int(self.d_output))

    def io(self) -> ModelIO:
        shape = self.engine.get_tensor_shape(self.input_name)
        size = int(shape[-1]) if int(shape[-1]) > 0 else None
        return ModelIO(size, self.num_classes)

    def infer(self, batch) -> np.ndarray:
        cudart = self.cudart
        n = int(batch.shape()[0]) if callable(getattr(batch, "shape", None)) else int(batch.shape[0])
        if n > self.options.max_batch_size:
            raise ValueError(f"batch of {n} exceeds the engine's max batch {self.options.max_batch_size}")
        crop = self.card.preprocessing.crop
        if hasattr(batch, "copy_to_external"):  # DALI TensorGPU: device-to-device, ordered after DALI
            batch.copy_to_external(int(self.d_input), cuda_stream=int(self.stream))
        else:  # a host array (e.g. parity checks against ONNX Runtime)
            host = np.ascontiguousarray(batch, dtype=np.float32)
            _check(cudart.cudaMemcpyAsync(int(self.d_input), host.ctypes.data, host.nbytes,
                                          cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.stream))
        self.context.set_input_shape(self.input_name, (n, 3, crop, crop))
        if not self.context.execute_async_v3(int(self.stream)):
            raise RuntimeError(f"{self.model_path}: TensorRT execution failed")
        out = np.empty((n, self.num_classes), dtype=np.float32)
        _check(cudart.cudaMemcpyAsync(out.ctypes.data, int(self.d_output), out.nbytes,
                                      cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return softmax(out)

    def close(self) -> None:
        for ptr in (getattr(self, "d_input", None), getattr(self, "d_output", None)):
            if ptr is not None:
                self.cudart.cudaFree(ptr)
        if getattr(self, "stream", None) is not None:
            self.cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.d_input = self.d_output = None
