"""TensorRT engines (``.plan``) on an NVIDIA GPU; the batch arrives in device memory from DALI.

Needs the ``[gpu]`` extra (tensorrt, cuda-python 13) and a GPU. Never run on this project's
machines (no GPU): written and checked against the sources cited in docs/gpu.md.

One host wait per batch, for the results the caller needs on the host:

- **stage** (decode thread): the DALI batch is copied device-to-device into slot k of a ring of
  input buffers, on our own non-blocking copy stream (``copy_to_external`` with a ``c_void_p``
  stream, ``non_blocking=True``), after waiting *on the GPU* for slot k's previous inference
  (``cudaStreamWaitEvent`` on its "free" event); an event marks the copy done. No host wait.
- **forward**: the inference stream waits for that event, TensorRT runs (``execute_async_v3``),
  a "free" event is recorded for slot k, and the outputs come back into pinned host buffers; the
  one ``cudaStreamSynchronize`` is here.

The ring holds ``DECODE_AHEAD + 2`` slots: the batches the decode thread may have queued, the one
it is staging and the one being inferred (engine/pipeline/stages.py), so a slot is never reused
before its inference has been enqueued.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

from bmengine.engine.backends import cuda_runtime as cuda
from bmengine.engine.backends.base import Backend, ModelIO, Outputs
from bmengine.engine.model.card import ModelCard, ModelCardError
from bmengine.engine.pipeline.stages import DECODE_AHEAD

RING = DECODE_AHEAD + 2


@dataclass(frozen=True)
class StagedBatch:
    slot: int
    n: int


def plan_mismatch(built: dict, here: dict) -> str | None:
    """Why a plan built on ``built`` (card.architecture["tensorrt"]) cannot run ``here``, else None.
    A TensorRT engine is specific to the GPU model and the TensorRT version that built it."""
    problems = [f"{what} {built.get(key)!r} (this machine: {here.get(key)!r})"
                for key, what in (("gpu", "GPU"), ("compute_capability", "compute capability"),
                                  ("version", "TensorRT"))
                if built.get(key) is not None and built.get(key) != here.get(key)]
    return "; ".join(problems) or None


class TensorRTBackend(Backend):
    name = "tensorrt"
    device = "gpu"
    default_batch_size = 256

    @classmethod
    def preferred_batch_size(cls, card: ModelCard) -> int:
        """The batch the plan's optimisation profile was tuned for (``bmengine compile --opt-batch``)."""
        built = (card.architecture or {}).get("tensorrt") or {}
        return int(built.get("opt_batch") or cls.default_batch_size)

    def __init__(self, model_path, card, options):
        super().__init__(model_path, card, options)
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise ModelCardError(f"{model_path}: TensorRT is not installed ({exc}); install the [gpu] extra, "
                                 "or run the model's .onnx export instead") from None
        try:
            self.cudart = cuda.runtime()
            cuda.check(self.cudart.cudaSetDevice(options.device_id))
            here = {**cuda.device_identity(options.device_id), "version": trt.__version__}
        except (cuda.CudaUnavailableError, RuntimeError) as exc:
            raise ModelCardError(f"{model_path}: {exc}") from None
        source = (card.architecture.get("compiled_from") or {}).get("file", "its .onnx")
        built = card.architecture.get("tensorrt") if isinstance(card.architecture.get("tensorrt"), dict) else {}
        if (why := plan_mismatch(built, here)) is not None:
            raise ModelCardError(f"{model_path}: built for another machine: {why}. A plan runs only where it was "
                                 f"built; compile {source} here with `bmengine compile`")
        self._trt = trt
        self._thread = threading.local()  # which threads have made the device current
        self._thread.on_device = True
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if self.engine is None:
            raise ModelCardError(f"{model_path}: TensorRT could not deserialize this engine; compile {source} "
                                 "here with `bmengine compile`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = tuple(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.ood_name = card.ood_output if card.ood_output in self.output_names else None
        self.output_name = ("logits" if "logits" in self.output_names
                            else next(n for n in self.output_names if n != self.ood_name))
        self._check_input(trt, options.max_batch_size)
        n, crop = options.max_batch_size, card.preprocessing.crop
        self.num_classes = int(self.engine.get_tensor_shape(self.output_name)[-1])
        self.stream, self.copy_stream = cuda.stream(), cuda.stream()
        self.staged = [cuda.event() for _ in range(RING)]  # slot k holds a finished copy
        self.free = [cuda.event() for _ in range(RING)]  # slot k's inference has read it
        self.d_inputs = [cuda.check(self.cudart.cudaMalloc(n * 3 * crop * crop * 4)) for _ in range(RING)]
        self._next_slot = 0
        self.timing = False  # bench: record each inference's device time in ``last_infer_ms``
        self.last_infer_ms: float | None = None
        # every output needs an address; the ones the backend returns also get a pinned host buffer
        self.d_outputs, self.h_outputs = {}, {}
        for name in self.output_names:
            shape = self.engine.get_tensor_shape(name)
            per_item = int(np.prod([max(int(d), 1) for d in shape[1:]]))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            self.d_outputs[name] = cuda.check(self.cudart.cudaMalloc(n * per_item * dtype.itemsize))
            self._bind(name, self.d_outputs[name])
            if name in (self.output_name, self.ood_name):
                self.h_outputs[name] = cuda.PinnedArray.allocate((n, per_item), dtype)

    def _check_input(self, trt, max_batch: int) -> None:
        dtype = self.engine.get_tensor_dtype(self.input_name)
        if dtype != trt.DataType.FLOAT:
            raise ModelCardError(f"{self.model_path}: input {self.input_name!r} is {dtype}, but the decoder "
                                 "delivers float32; compile from the fp32 or int8 ONNX export")
        profile_max = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        if max_batch > profile_max:
            raise ModelCardError(f"{self.model_path}: built for batches of at most {profile_max}, asked for "
                                 f"{max_batch}; use --batch-size {profile_max} or compile with --max-batch {max_batch}")

    def _bind(self, name: str, pointer) -> None:
        if not self.context.set_tensor_address(name, int(pointer)):
            raise RuntimeError(f"{self.model_path}: TensorRT refused the address of {name!r}")

    @property
    def input_stream(self):
        """The stream DALI should return its outputs on (``pipe.run(cuda_stream=...)``)."""
        return cuda.native(self.copy_stream)

    def io(self) -> ModelIO:
        shape = self.engine.get_tensor_shape(self.input_name)
        size = int(shape[-1]) if int(shape[-1]) > 0 else None
        return ModelIO(size, self.num_classes, self.output_names)

    def _on_device(self) -> None:
        """Make the backend's GPU current in the calling thread. The current device is per host
        thread (CUDA Runtime API, cudaSetDevice), and the slide stream stages and infers in threads
        of its own: without this, every thread but the constructor's would use device 0."""
        if not getattr(self._thread, "on_device", False):
            cuda.check(self.cudart.cudaSetDevice(self.options.device_id))
            self._thread.on_device = True

    def stage(self, batch) -> StagedBatch:
        """Queue a decoded batch's copy into the next ring slot (decode thread); no host wait."""
        self._on_device()
        cudart = self.cudart
        n = int(batch.shape()[0]) if callable(getattr(batch, "shape", None)) else int(batch.shape[0])
        if n > self.options.max_batch_size:
            raise ValueError(f"batch of {n} exceeds the engine's max batch {self.options.max_batch_size}")
        slot, self._next_slot = self._next_slot, (self._next_slot + 1) % RING
        target = int(self.d_inputs[slot])
        cuda.check(cudart.cudaStreamWaitEvent(self.copy_stream, self.free[slot], 0))  # slot's last reader done
        if hasattr(batch, "copy_to_external"):  # DALI TensorGPU (DALI reads c_void_p, not int)
            batch.copy_to_external(ctypes.c_void_p(target), cuda_stream=ctypes.c_void_p(self.input_stream),
                                   non_blocking=True)
        else:  # a host array (parity checks against ONNX Runtime)
            host = np.ascontiguousarray(batch, dtype=np.float32)
            cuda.check(cudart.cudaMemcpyAsync(target, host.ctypes.data, host.nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self.copy_stream))
            cuda.check(cudart.cudaStreamSynchronize(self.copy_stream))  # ``host`` may go out of scope
        cuda.check(cudart.cudaEventRecord(self.staged[slot], self.copy_stream))
        return StagedBatch(slot, n)

    def forward(self, batch) -> Outputs:
        self._on_device()
        cudart = self.cudart
        staged = batch if isinstance(batch, StagedBatch) else self.stage(batch)
        n, crop = staged.n, self.card.preprocessing.crop
        cuda.check(cudart.cudaStreamWaitEvent(self.stream, self.staged[staged.slot], 0))
        self._bind(self.input_name, self.d_inputs[staged.slot])
        if not self.context.set_input_shape(self.input_name, (n, 3, crop, crop)):
            raise RuntimeError(f"{self.model_path}: TensorRT refused input shape {(n, 3, crop, crop)}")
        if self.timing:
            began, ended = cuda.timing_event(), cuda.timing_event()
            cuda.check(cudart.cudaEventRecord(began, self.stream))
        if not self.context.execute_async_v3(cuda.native(self.stream)):
            raise RuntimeError(f"{self.model_path}: TensorRT execution failed")
        if self.timing:
            cuda.check(cudart.cudaEventRecord(ended, self.stream))
        cuda.check(cudart.cudaEventRecord(self.free[staged.slot], self.stream))
        for name, host in self.h_outputs.items():
            nbytes = n * host.array.shape[1] * host.array.itemsize
            cuda.check(cudart.cudaMemcpyAsync(host.pointer, self.d_outputs[name], nbytes,
                                              cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self.stream))
        cuda.check(cudart.cudaStreamSynchronize(self.stream))  # the one host wait per batch
        if self.timing:
            self.last_infer_ms = cuda.elapsed_ms(began, ended)
            cudart.cudaEventDestroy(began)
            cudart.cudaEventDestroy(ended)
        logits = self.h_outputs[self.output_name].array[:n].astype(np.float32)  # a copy: the buffer is reused
        ood = self.h_outputs[self.ood_name].array[:n, 0].astype(np.float32) if self.ood_name else None
        return Outputs(logits, ood)

    def time_model(self, batch_size: int, n_batches: int) -> float:
        """Milliseconds for ``n_batches`` back-to-back executions of the engine alone on one batch
        already on the device (no decode, no copies, no host wait between them): the TensorRT
        model-only ceiling. For ``bmengine bench``; not while a run uses this backend."""
        self._on_device()
        cudart, crop = self.cudart, self.card.preprocessing.crop
        if batch_size > self.options.max_batch_size:
            raise ValueError(f"batch of {batch_size} exceeds the engine's max batch {self.options.max_batch_size}")
        cuda.check(cudart.cudaMemsetAsync(self.d_inputs[0], 0, batch_size * 3 * crop * crop * 4, self.stream))
        self._bind(self.input_name, self.d_inputs[0])
        if not self.context.set_input_shape(self.input_name, (batch_size, 3, crop, crop)):
            raise RuntimeError(f"{self.model_path}: TensorRT refused input shape {(batch_size, 3, crop, crop)}")
        began, ended = cuda.timing_event(), cuda.timing_event()
        try:
            if not self.context.execute_async_v3(cuda.native(self.stream)):  # warm-up
                raise RuntimeError(f"{self.model_path}: TensorRT execution failed")
            cuda.check(cudart.cudaEventRecord(began, self.stream))
            for _ in range(n_batches):
                self.context.execute_async_v3(cuda.native(self.stream))
            cuda.check(cudart.cudaEventRecord(ended, self.stream))
            return cuda.elapsed_ms(began, ended)
        finally:
            cudart.cudaEventDestroy(began)
            cudart.cudaEventDestroy(ended)

    def close(self) -> None:
        cudart = getattr(self, "cudart", None)
        if cudart is None:
            return
        for pointer in [*getattr(self, "d_inputs", []), *getattr(self, "d_outputs", {}).values()]:
            cudart.cudaFree(pointer)
        for host in getattr(self, "h_outputs", {}).values():
            host.free()
        for event in [*getattr(self, "staged", []), *getattr(self, "free", [])]:
            cudart.cudaEventDestroy(event)
        for name in ("stream", "copy_stream"):
            if getattr(self, name, None) is not None:
                cudart.cudaStreamDestroy(getattr(self, name))
                setattr(self, name, None)
        self.d_inputs, self.d_outputs, self.h_outputs, self.staged, self.free = [], {}, {}, [], []
