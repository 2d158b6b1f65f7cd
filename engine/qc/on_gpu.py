"""QC of a GPU batch where it lies: the Triton kernel reduces each QC image to a few profiles on
the device, and only those (about 2 KB per crop) cross to the host, in place of the images.

Without torch or Triton (the [gpu] extra brings both) the images are copied to the host and
checked there, as on the CPU; ``bmengine doctor`` says which a machine does.
"""

from __future__ import annotations

import logging

import numpy as np

from bmengine.engine.qc.stats import QcStats

log = logging.getLogger(__name__)


def kernels_available() -> bool:
    try:
        import torch  # noqa: F401
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def qc_stats_on_gpu(qc_images, cuda_stream: int | None) -> QcStats:
    """``QcStats`` of a DALI ``TensorListGPU`` of resized uint8 HWC images (all one size), computed
    on ``cuda_stream`` (the stream DALI returned them on; None: torch's current stream)."""
    import torch

    from bmengine.kernels.garbled_profiles import garbled_profiles

    dense = qc_images.as_tensor()  # a view of the batch as one NHWC tensor (DALI TensorGPU)
    stream = torch.cuda.ExternalStream(cuda_stream) if cuda_stream is not None else torch.cuda.current_stream()
    with torch.cuda.stream(stream):
        # zero copy (DLPack: the consumer stream is made to wait for DALI's work on the tensor)
        images = torch.from_dlpack(dense)
        profiles = garbled_profiles(images)
        host = {name: value.cpu().numpy() for name, value in profiles.items()}  # the one wait, a few KB
    return QcStats.from_row_profiles(host, (int(images.shape[1]), int(images.shape[2])))


def qc_images_to_host(qc_images) -> np.ndarray:
    """The fallback: the QC images copied to the host (a copy: DALI reuses its buffers)."""
    return np.array(qc_images.as_cpu().as_tensor())
