"""Which CUDA GPUs this process can see (0 without a GPU or without cuda-python, never an error)."""

from __future__ import annotations


def cuda_device_count() -> int:
    """``cudaGetDeviceCount`` through cuda-python 13 (``cuda.bindings.runtime``, where
    ``from cuda import cudart`` no longer exists); 0 when no driver, device or binding is present."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return 0
    err, count = cudart.cudaGetDeviceCount()
    return int(count) if int(err) == 0 else 0
