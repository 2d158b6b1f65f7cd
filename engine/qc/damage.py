"""Damage a JPEG the way archives do, to test the garbled-crop detector on more than 8 examples.

Each function takes the bytes of a clean baseline JPEG and a seeded NumPy generator and returns
damaged bytes that may or may not still decode. The damage happens in the entropy-coded scan
(after the SOS header), where a flipped bit, a lost sector or a bad copy desynchronises the
decoder: the rest of the picture comes out shifted, in wrong colours, or as another image's data.
``DAMAGE_KINDS`` is the registry the corpus benchmark and the tests draw from.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np

EOI = b"\xff\xd9"
_STANDALONE = {0x01} | set(range(0xD0, 0xD9))  # markers without a length field


def scan_bounds(data: bytes) -> tuple[int, int]:
    """(start, end) of the entropy-coded data of the first scan: after the SOS header, before EOI."""
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker in _STANDALONE or marker == 0xFF:
            pos += 1 if marker == 0xFF else 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # SOS
            end = len(data) - 2 if data.endswith(EOI) else len(data)
            return pos + 2 + length, end
        pos += 2 + length
    raise ValueError("no SOS marker: not a baseline JPEG")


def _point(rng: np.random.Generator, start: int, end: int, lo: float = 0.15, hi: float = 0.85) -> int:
    """A byte offset between ``lo`` and ``hi`` of the way through [start, end)."""
    return int(start + rng.uniform(lo, hi) * (end - start))


def byte_errors(data: bytes, rng: np.random.Generator) -> bytes:
    """1-4 bytes of the scan replaced by random values (a bad sector, a flipped bit, a bad copy)."""
    start, end = scan_bounds(data)
    out = bytearray(data)
    for _ in range(int(rng.integers(1, 5))):
        i = _point(rng, start, end)
        out[i] = (out[i] ^ int(rng.integers(1, 256))) & 0xFF
    return bytes(out)


def truncate_zero(data: bytes, rng: np.random.Generator) -> bytes:
    """The scan cut short and padded back to its length with 0x00 (a file pre-allocated, never filled)."""
    return _truncate(data, rng, b"\x00")


def truncate_grey(data: bytes, rng: np.random.Generator) -> bytes:
    """The scan cut short and padded with 0x80 bytes, as some copy tools fill unreadable sectors."""
    return _truncate(data, rng, b"\x80")


def truncate_eoi(data: bytes, rng: np.random.Generator) -> bytes:
    """The scan cut short with the end-of-image marker re-appended: decoders fill the rest with grey."""
    start, end = scan_bounds(data)
    return data[: _point(rng, start, end)] + EOI


def truncate_cut(data: bytes, rng: np.random.Generator) -> bytes:
    """The file cut short, no end-of-image marker (an interrupted copy): the engine refuses these
    before decoding (libjpeg-turbo refuses them too; nvJPEG would decode them)."""
    start, end = scan_bounds(data)
    return data[: _point(rng, start, end)]


def _truncate(data: bytes, rng: np.random.Generator, fill: bytes) -> bytes:
    start, end = scan_bounds(data)
    cut = _point(rng, start, end)
    return data[:cut] + fill * (end - cut) + EOI


def shifted_blocks(data: bytes, rng: np.random.Generator) -> bytes:
    """A byte range of the scan duplicated or dropped: everything after it moves forward or back."""
    start, end = scan_bounds(data)
    at = _point(rng, start, end)
    length = int(rng.integers(16, max(17, (end - start) // 8)))
    if rng.random() < 0.5:
        return data[:at] + data[at - length : at] + data[at:]  # duplicated: the stream repeats itself
    return data[:at] + data[min(at + length, end - 1) :]  # dropped: a lost sector


def foreign_band(data: bytes, rng: np.random.Generator, other: bytes) -> bytes:
    """Scan data of another crop spliced in: a band (or the whole rest) of another picture."""
    start, end = scan_bounds(data)
    o_start, o_end = scan_bounds(other)
    cut = _point(rng, start, end, 0.15, 0.7)
    o_cut = o_start + int((cut - start) / (end - start) * (o_end - o_start))
    if rng.random() < 0.5:
        return data[:cut] + other[o_cut:o_end] + EOI  # the rest of the picture is the other crop's
    back = _point(rng, cut, end, 0.3, 0.8)
    o_back = o_cut + (back - cut)
    return data[:cut] + other[o_cut:o_back] + data[back:end] + EOI  # a band, then this crop again


def with_restarts(data: bytes, quality: int = 90) -> bytes:
    """Re-encode a crop with a restart marker after every MCU row (4:2:0, as many scanners write)."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").save(out, "JPEG", quality=quality, restart_marker_rows=1)
    return out.getvalue()


def lost_restart(data: bytes, rng: np.random.Generator) -> bytes:
    """One or two restart markers of a restart-coded JPEG dropped, renumbered or lost with a span."""
    start, end = scan_bounds(data)
    scan = data[start:end]
    markers = [i for i in range(len(scan) - 1) if scan[i] == 0xFF and 0xD0 <= scan[i + 1] <= 0xD7]
    if not markers:
        raise ValueError("no restart markers: encode with with_restarts() first")
    out = bytearray(scan)
    lo, hi = int(0.15 * len(markers)), max(int(0.85 * len(markers)), int(0.15 * len(markers)) + 1)
    chosen = sorted(rng.choice(np.arange(lo, hi), size=min(int(rng.integers(1, 3)), hi - lo), replace=False))
    for m in reversed(chosen):  # from the end, so earlier offsets stay valid
        at = markers[m]
        how = rng.integers(3)
        if how == 0:
            del out[at : at + 2]  # marker dropped
        elif how == 1:
            out[at + 1] = 0xD0 + (out[at + 1] - 0xD0 + int(rng.integers(1, 8))) % 8  # wrong number
        else:
            del out[max(0, at - int(rng.integers(8, 64))) : at + 2]  # lost with the bytes before it
    return data[:start] + bytes(out) + data[end:]


Damage = Callable[[bytes, np.random.Generator, bytes], bytes]
"""(crop, generator, another crop) -> damaged crop; only ``foreign_band`` uses the other crop."""

DAMAGE_KINDS: dict[str, Damage] = {
    "byte_errors": lambda data, rng, _: byte_errors(data, rng),
    "lost_restart": lambda data, rng, _: lost_restart(with_restarts(data), rng),
    "truncate_zero": lambda data, rng, _: truncate_zero(data, rng),
    "truncate_grey": lambda data, rng, _: truncate_grey(data, rng),
    "truncate_eoi": lambda data, rng, _: truncate_eoi(data, rng),
    "truncate_cut": lambda data, rng, _: truncate_cut(data, rng),
    "shifted_blocks": lambda data, rng, _: shifted_blocks(data, rng),
    "foreign_band": foreign_band,
}


def reference(kind: str, data: bytes) -> bytes:
    """The clean encoding a damaged crop is compared with (the re-encode, for restart damage)."""
    return with_restarts(data) if kind == "lost_restart" else data
