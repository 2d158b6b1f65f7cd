"""Read an image's size from its header, without decoding a pixel.

The engine checks every crop's pixel count *before* decoding it: a 30000x30000 PNG of a few hundred
kilobytes (a decompression bomb) would otherwise cost gigabytes inside the decoder. Only the
formats a slide store holds are parsed: JPEG (SOF segment), PNG (IHDR chunk), TIFF (first IFD).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


class HeaderError(ValueError):
    """The header does not say how large the image is."""


@dataclass(frozen=True)
class ImageHeader:
    format: str  # jpeg | png | tiff
    width: int
    height: int
    channels: int  # 1 grey, 2 grey+alpha, 3 colour, 4 colour+alpha (or CMYK)

    @property
    def pixels(self) -> int:
        return self.width * self.height


# JPEG start-of-frame markers: baseline, extended, progressive, lossless, hierarchical, arithmetic.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM and RSTn carry no length
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> channels after palette expansion


def _jpeg_segments(data: bytes):
    """(position, marker) of each JPEG segment after SOI, up to and including the first start of
    scan (0xDA) or end of image (0xD9); HeaderError where the marker structure breaks."""
    pos = 2  # after SOI
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise HeaderError(f"JPEG marker expected at byte {pos}, found 0x{data[pos]:02x}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        yield pos, marker
        if marker in (0xD9, 0xDA):
            return
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise HeaderError(f"JPEG segment at byte {pos} has invalid length {length}")
        pos += 2 + length


def _jpeg(data: bytes) -> ImageHeader:
    for pos, marker in _jpeg_segments(data):
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            break
        if marker in _SOF:
            if pos + 9 >= len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            channels = data[pos + 9]
            if height == 0:
                raise HeaderError("JPEG frame header gives height 0 (size set later by a DNL marker)")
            return ImageHeader("jpeg", width, height, channels)
    raise HeaderError("JPEG has no frame header (SOF) before its image data")


def jpeg_is_cut_short(data: bytes | memoryview) -> bool:
    """True when a JPEG's first scan starts but no end-of-image marker (0xFFD9) follows it: the file
    was cut short (an interrupted copy). libjpeg-turbo refuses such a file and nvJPEG decodes it
    (all 40 of the damaged corpus's, H100; benchmarks/results/2026-11-26-h100-gpu-path.md), so
    the engine refuses it itself, before decoding and the same way on either device. Entropy-coded
    data cannot hold 0xFFD9 (a 0xFF byte there is followed by 0x00 or a restart marker), so any
    0xFFD9 after the scan header ends the image; an embedded thumbnail's own lies before the scan."""
    data = bytes(data)
    try:
        for pos, marker in _jpeg_segments(data):
            if marker == 0xDA:
                return data.find(b"\xff\xd9", pos + 2) == -1
    except HeaderError:
        return False  # broken structure: the decoder names that damage itself
    return False


def _png(data: bytes) -> ImageHeader:
    if len(data) < 26 or data[12:16] != b"IHDR":
        raise HeaderError("PNG does not start with an IHDR chunk")
    width, height, _depth, colour = struct.unpack(">IIBB", data[16:26])
    if colour not in _PNG_CHANNELS:
        raise HeaderError(f"PNG colour type {colour} is not valid")
    return ImageHeader("png", width, height, _PNG_CHANNELS[colour])


def _tiff(data: bytes) -> ImageHeader:
    order = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(order + "I", data[4:8])
        (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
        tags: dict[int, int] = {}
        for i in range(count):
            entry = data[ifd + 2 + 12 * i : ifd + 14 + 12 * i]
            tag, kind, _n = struct.unpack(order + "HHI", entry[:8])
            value = struct.unpack(order + ("H" if kind == 3 else "I"), entry[8:10] if kind == 3 else entry[8:12])[0]
            tags[tag] = value
    except struct.error:
        raise HeaderError("TIFF image file directory is cut short") from None
    if 256 not in tags or 257 not in tags:
        raise HeaderError("TIFF first image has no width/length tags")
    return ImageHeader("tiff", tags[256], tags[257], tags.get(277, 1))


# Headers sit in front, but EXIF/ICC/XMP segments before the frame header can add up to a few 100 KB.
_HEAD_BYTES = 1 << 20
_PARSERS = {b"\xff\xd8\xff": _jpeg, b"\x89PNG\r\n\x1a\n": _png, b"II*\x00": _tiff, b"MM\x00*": _tiff}


def read_header(data: bytes | memoryview) -> ImageHeader:
    """Format, size and channel count from the first bytes of an encoded image."""
    head = bytes(data[:_HEAD_BYTES])
    for magic, parse in _PARSERS.items():
        if head.startswith(magic):
            header = parse(head)
            if header.width <= 0 or header.height <= 0:
                raise HeaderError(f"{header.format.upper()} header gives size {header.width}x{header.height}")
            return header
    raise HeaderError(f"not a JPEG, PNG or TIFF (starts {head[:4].hex()})")
