"""The few CUDA runtime calls the GPU path makes, through cuda-python 13 (checked, with handles).

cuda-python 13 has no ``from cuda import cudart``: the runtime is ``cuda.bindings.runtime`` and a
handle's address is ``cuda.bindings.utils.get_cuda_native_handle(obj)`` (NVIDIA/cuda-python,
cuda_bindings/cuda/bindings/utils/__init__.py), not ``int(obj)``. Every call returns
``(err, *values)``; ``check`` raises on a non-zero error.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np


class CudaUnavailableError(RuntimeError):
    """cuda-python (the [gpu] extra) or a GPU is missing."""


def runtime():
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise CudaUnavailableError(f"cuda-python is not installed ({exc}): install the [gpu] extra "
                                   "(pip install 'bmengine[gpu]') on a machine with an NVIDIA GPU") from None
    return cudart


def native(handle) -> int:
    """The raw address of a cuda-python stream/event handle, for libraries that take integers."""
    from cuda.bindings.utils import get_cuda_native_handle

    return int(get_cuda_native_handle(handle))


def check(result):
    """cuda-python returns (err, *values): raise on an error, return the value(s)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = getattr(err, "name", str(err))
        raise RuntimeError(f"CUDA error {name}")
    return values[0] if len(values) == 1 else (values or None)


def stream():
    """A non-blocking stream: it never synchronises with the legacy default stream."""
    cudart = runtime()
    return check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))


def event():
    cudart = runtime()
    return check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming))


def timing_event():
    """An event that records time (``cudaEventDefault``), for ``elapsed_ms``."""
    return check(runtime().cudaEventCreate())


def elapsed_ms(start, end) -> float:
    """Milliseconds between two recorded timing events (waits for ``end``)."""
    cudart = runtime()
    check(cudart.cudaEventSynchronize(end))
    return float(check(cudart.cudaEventElapsedTime(start, end)))


def versions() -> dict:
    """CUDA versions as "major.minor": the newest the driver supports, and this runtime's."""
    cudart = runtime()

    def words(value: int) -> str:
        return f"{value // 1000}.{(value % 1000) // 10}"

    return {"cuda_driver": words(int(check(cudart.cudaDriverGetVersion()))),
            "cuda_runtime": words(int(check(cudart.cudaRuntimeGetVersion())))}


def pci_bus_id(device_id: int) -> str:
    """The device's PCI bus id ("0000:3B:00.0"): how NVML finds the same GPU whatever
    CUDA_VISIBLE_DEVICES says."""
    raw = check(runtime().cudaDeviceGetPCIBusId(32, device_id))
    text = raw.decode(errors="replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
    return text.strip("\x00 ")


@dataclass
class PinnedArray:
    """A page-locked host buffer (cudaMallocHost) seen as a NumPy array: device-to-host copies into
    it are truly asynchronous."""

    pointer: int
    array: np.ndarray

    @classmethod
    def allocate(cls, shape: tuple[int, ...], dtype) -> "PinnedArray":
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        pointer = int(check(runtime().cudaMallocHost(nbytes)))
        buffer = (ctypes.c_byte * nbytes).from_address(pointer)
        return cls(pointer, np.frombuffer(buffer, dtype=dtype).reshape(shape))

    def free(self) -> None:
        if self.pointer:
            runtime().cudaFreeHost(self.pointer)
            self.pointer = 0


def device_identity(device_id: int) -> dict:
    """The GPU's name and compute capability: what a TensorRT plan is tied to."""
    props = check(runtime().cudaGetDeviceProperties(device_id))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.strip("\x00 "), "compute_capability": f"{props.major}.{props.minor}"}
