"""What the engine agrees to read and decode, so that no input can exhaust the machine.

A lab runs bmengine overnight on archives nobody has checked: a link to ``/dev/zero``, a FIFO, a
multi-gigabyte file or a decompression bomb must each be refused with a reason, never read until
the kernel kills the process. The defaults are generous for single-cell crops (PBC crops are
360x363 and ~16 KB, Matek's 250x250) and far below what hurts a 24 GiB, 2-core machine: a batch of
64 crops at the pixel cap decodes to at most ~0.8 GB.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from bmengine.engine.store.image_header import HeaderError, ImageHeader, read_header

DEFAULT_MAX_CROP_BYTES = 8 << 20  # 8 MiB: ~500x a PBC crop
DEFAULT_MAX_CROP_PIXELS = 2048 * 2048  # 4.2 megapixels: ~12 MB decoded


@dataclass(frozen=True)
class InputLimits:
    max_crop_bytes: int = DEFAULT_MAX_CROP_BYTES
    max_crop_pixels: int = DEFAULT_MAX_CROP_PIXELS

    def __post_init__(self) -> None:
        for name in ("max_crop_bytes", "max_crop_pixels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")

    def check_size(self, n_bytes: int) -> str | None:
        """Why a crop of ``n_bytes`` is refused, or None."""
        if n_bytes > self.max_crop_bytes:
            return (f"{_mib(n_bytes)} is above the {_mib(self.max_crop_bytes)} limit for one crop "
                    "(--max-crop-bytes); not read")
        return None

    def check_pixels(self, data: bytes | memoryview) -> str | None:
        """Why an encoded crop is refused before decoding (too many pixels, unreadable header), or None."""
        return self.check_header(data)[1]

    def check_header(self, data: bytes | memoryview) -> tuple[ImageHeader | None, str | None]:
        """The crop's header, and why it must not be decoded (None when it may)."""
        try:
            header = read_header(data)
        except HeaderError as exc:
            return None, f"image header unreadable ({exc}); not decoded"
        if header.pixels > self.max_crop_pixels:
            return header, (f"image is {header.width}x{header.height} = {header.pixels / 1e6:.1f} megapixels, above "
                            f"the {self.max_crop_pixels / 1e6:.1f} megapixel limit for one crop (--max-crop-pixels); "
                            "not decoded")
        return header, None


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


_KINDS = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO (named pipe)", stat.S_ISCHR: "a character device",
          stat.S_ISBLK: "a block device", stat.S_ISSOCK: "a socket"}


def read_regular_file(path: Path, limits: InputLimits) -> tuple[bytes | None, str | None]:
    """A regular file's bytes, or why not; never blocks on a FIFO and never reads past the size cap.

    The file is opened non-blocking and checked with ``fstat`` on the open descriptor, so a path that
    is swapped for a device between the check and the read is still refused.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((name for test, name in _KINDS.items() if test(info.st_mode)), "not a regular file")
            return None, f"is {kind}, not a regular file; not read"
        if (reason := limits.check_size(info.st_size)) is not None:
            return None, reason
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = handle.read(limits.max_crop_bytes + 1)
    except OSError as exc:
        return None, f"unreadable: {exc.strerror or exc}"
    finally:
        os.close(fd)
    if (reason := limits.check_size(len(data))) is not None:  # grew after fstat
        return None, reason
    return data, None
