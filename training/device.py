"""Where training runs: the CPU, or a CUDA GPU when torch sees one.

Augmentation stays on the CPU with its own seeded generator whatever the device, so a run draws the
same crops, zooms and colours on either; only the network's arithmetic moves. A lab with a GPU
fine-tunes in seconds what takes minutes on two cores.
"""

from __future__ import annotations

import torch

#: what ``--device`` accepts besides ``cuda:N``
DEVICE_CHOICES = ("auto", "cpu", "cuda")


class DeviceUnavailableError(ValueError):
    """``--device`` names a device this machine's torch cannot use; nothing was trained."""


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA GPU if torch sees one, else the CPU; ``cpu``; ``cuda`` or ``cuda:N``."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index = 0 if name == "cuda" else name.split(":", 1)[1]
        if not str(index).isdigit():
            raise DeviceUnavailableError(f"--device {name}: give cuda or cuda:N with N a GPU number")
        if not torch.cuda.is_available():
            built = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceUnavailableError(f"--device {name}: torch sees no CUDA GPU here (torch {torch.__version__}, {built}); "
                                         "use --device cpu or auto")
        count = torch.cuda.device_count()
        if int(index) >= count:
            raise DeviceUnavailableError(f"--device {name}: this machine has {count} CUDA GPU(s), numbered from 0")
        return torch.device("cuda", int(index))
    raise DeviceUnavailableError(f"--device {name}: expected one of {', '.join(DEVICE_CHOICES)} or cuda:N")


def device_words(device: torch.device) -> str:
    """What the history records per epoch, e.g. ``cuda:0 (NVIDIA H200)`` or ``cpu``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
