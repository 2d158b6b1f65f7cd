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


def parse_gpu_list(text: str) -> tuple[int, ...]:
    """'all' (every GPU CUDA can see) or a comma list of device numbers."""
    if text.strip().lower() == "all":
        count = cuda_device_count()
        if count == 0:
            raise ValueError("--gpus all: no CUDA GPU is visible on this machine")
        return tuple(range(count))
    try:
        ids = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--gpus {text!r}: expected 'all' or device numbers such as 0,1") from None
    if not ids or min(ids) < 0 or len(set(ids)) != len(ids):
        raise ValueError(f"--gpus {text!r}: expected distinct device numbers >= 0")
    return ids
