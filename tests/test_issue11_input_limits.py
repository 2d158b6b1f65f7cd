"""Issue 11, item 2: no limits on what is read or decoded.

Seen: a link ``x.jpg -> /dev/zero`` read until the kernel killed the process, a FIFO hung ingest
forever, and a 30000x30000 PNG of a few hundred KB cost 5.6 GB at `run` and was counted as a cell.
These tests check the checks (a link to ``/dev/null``, a FIFO with no writer, a bomb refused from
its header) without staging the disaster.
"""

from __future__ import annotations

import io
import json
import os
import sys
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from bmengine.engine.store import SlideStore
from bmengine.engine.store.image_header import HeaderError, read_header
from bmengine.engine.store.ingest import read_crop
from bmengine.engine.store.limits import InputLimits
from cli_helpers import bmengine, crop_folder, ingest
from conftest import BM, PBC, pbc_files


def png_bomb(side: int = 30000) -> bytes:
    """A real, valid 1-bit greyscale PNG of side x side pixels: ~110 KB on disk, 2.7 GB as decoded RGB.
    Compressed in a stream, so building it never holds more than one row in memory."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + bytes((side + 7) // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize("path", [pbc_files("monocyte", 1)[0], BM / "BLA" / next(iter(sorted(
    p.name for p in (BM / "BLA").glob("*.jpg"))))], ids=["pbc-jpeg", "matek-jpeg"])
def test_header_size_matches_pil_for_real_jpegs(path):
    header = read_header(path.read_bytes())
    with Image.open(path) as img:
        assert (header.width, header.height) == img.size and header.channels == 3 and header.format == "jpeg"


@pytest.mark.parametrize("fmt,mode,channels", [("PNG", "RGB", 3), ("PNG", "L", 1), ("PNG", "RGBA", 4),
                                               ("TIFF", "RGB", 3), ("JPEG", "L", 1)])
def test_header_size_and_channels_of_re_encoded_real_crops(fmt, mode, channels):
    with Image.open(pbc_files("eosinophil", 1)[0]) as img:
        buf = io.BytesIO()
        img.convert(mode).crop((0, 0, 301, 257)).save(buf, fmt)
    header = read_header(buf.getvalue())
    assert (header.width, header.height, header.channels) == (301, 257, channels)


def test_png_bomb_is_refused_from_its_header_alone():
    bomb = png_bomb()
    assert len(bomb) < 300_000
    header = read_header(bomb)
    assert header.pixels == 30000 * 30000
    reason = InputLimits().check_pixels(bomb)
    assert reason is not None and "30000x30000" in reason and "not decoded" in reason


def test_a_header_that_hides_its_size_is_refused():
    jpeg = pbc_files("basophil", 1)[0].read_bytes()
    with pytest.raises(HeaderError):
        read_header(jpeg[:2] + b"\xff\xda" + jpeg[4:])  # scan before any frame header
    assert "header unreadable" in InputLimits().check_pixels(jpeg[:2] + b"\xff\xda" + jpeg[4:])


def test_ingest_refuses_devices_fifos_big_files_and_bombs_and_names_each(tmp_path):
    crops = crop_folder(tmp_path / "crops", {"P1": {"lymphocyte": 3}})
    slide = crops / "P1"
    os.symlink("/dev/null", slide / "device.jpg")  # a character device (the check, not /dev/zero itself)
    os.mkfifo(slide / "pipe.jpg")  # nobody writes to it: opening it blocking would hang forever
    (slide / "bomb.png").write_bytes(png_bomb())
    big = slide / "big.jpg"
    big.write_bytes(pbc_files("neutrophil", 1)[0].read_bytes() + bytes(200_000))
    result = ingest(crops, tmp_path / "slides", "--max-crop-bytes", "150000")
    assert result.returncode == 1
    text = " ".join(result.stdout.split())
    for name, reason in [("device.jpg", "character device"), ("pipe.jpg", "FIFO"),
                         ("bomb.png", "30000x30000"), ("big.jpg", "--max-crop-bytes")]:
        assert name in text and reason in text, (name, text)
    store = SlideStore.open(tmp_path / "slides" / "P1.zarr")
    assert store.n_cells == 3
    skipped = {Path(s["file"]).name: s["reason"] for s in store.provenance["skipped_files"]}
    assert set(skipped) == {"device.jpg", "pipe.jpg", "bomb.png", "big.jpg"}


def test_read_crop_never_reads_past_the_cap(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(pbc_files("platelet", 1)[0].read_bytes())
    data, reason = read_crop(path, InputLimits(max_crop_bytes=1000))
    assert data is None and "limit" in reason
    data, reason = read_crop(path)
    assert reason is None and data == path.read_bytes()


def test_run_refuses_a_bomb_inside_a_store_before_decoding_it(tmp_path, tiny_model):
    """A store made elsewhere (or with a raised cap) can still hold a bomb: `run` checks every header."""
    crops = crop_folder(tmp_path / "crops", {"P1": {"lymphocyte": 4}})
    (crops / "P1" / "bomb.png").write_bytes(png_bomb())
    ingest(crops, tmp_path / "slides", "--max-crop-pixels", str(10**10))
    rss_file = tmp_path / "peak_rss_kb"
    own_peak = [sys.executable, "-c", "import atexit, resource, sys; path = sys.argv.pop(1); "
                "atexit.register(lambda: open(path, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))); "
                "sys.argv[0] = 'bmengine'; from bmengine.engine.cli.app import main; main()", str(rss_file)]
    result = bmengine("run", tmp_path / "slides", "--model", tiny_model, "--out", tmp_path / "out", prefix=own_peak)
    peak_mb = int(rss_file.read_text()) / 1024  # this run's own peak, not the test session's other children
    assert result.returncode == 3, result.stderr
    cells = pd.read_parquet(tmp_path / "out" / "P1" / "cells.parquet")
    bomb = cells[cells["source"].str.endswith("bomb.png")].iloc[0]
    assert "30000x30000" in bomb["error"] and "not decoded" in bomb["error"] and pd.isna(bomb["predicted"])
    assert cells["predicted"].notna().sum() == 4
    assert "bomb.png" in result.stderr  # named on the console too
    assert peak_mb < 3000, f"run peaked at {peak_mb:.0f} MB"  # decoding the bomb: 2.7 GB for its pixels alone (5.6 GB seen)


def test_run_applies_a_lower_pixel_cap_to_real_crops(tmp_path, tiny_model):
    crops = crop_folder(tmp_path / "crops", {"P1": {"basophil": 3}})
    ingest(crops, tmp_path / "slides")
    result = bmengine("run", tmp_path / "slides", "--model", tiny_model, "--out", tmp_path / "out",
                      "--max-crop-pixels", "100000")  # PBC crops are 360x363 = 130,680 pixels
    assert result.returncode == 3
    cells = pd.read_parquet(tmp_path / "out" / "P1" / "cells.parquet")
    assert cells["error"].str.contains("megapixel limit").all()
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["arguments"]["limits"] == {"max_crop_bytes": 8 << 20, "max_crop_pixels": 100000}


def test_pbc_and_matek_crops_are_far_inside_the_default_limits():
    limits = InputLimits()
    sizes = [p.stat().st_size for p in list(PBC.glob("*/*.jpg"))[:500]]
    assert max(sizes) * 100 < limits.max_crop_bytes
    assert all(limits.check_pixels(p.read_bytes()) is None for p in BM.glob("*/*.jpg"))


def test_a_store_with_a_fifo_or_a_link_inside_is_refused_without_hanging(tmp_path):
    ingest(crop_folder(tmp_path / "crops", {"P1": {"monocyte": 2}, "P2": {"monocyte": 2}}), tmp_path / "slides")
    label_chunk = tmp_path / "slides" / "P1.zarr" / "cells" / "label" / "c" / "0"
    label_chunk.unlink()
    os.mkfifo(label_chunk)  # zarr would block opening it
    with pytest.raises(Exception, match="not a regular file"):
        SlideStore.open(tmp_path / "slides" / "P1.zarr")
    byte_chunk = tmp_path / "slides" / "P2.zarr" / "crops" / "bytes" / "c" / "0"
    byte_chunk.unlink()
    os.symlink("/dev/null", byte_chunk)
    with pytest.raises(Exception, match="is a link"):
        SlideStore.open(tmp_path / "slides" / "P2.zarr")


def test_eval_finishes_with_a_fifo_among_real_crops(tmp_path, tiny_model):
    folder = tmp_path / "data" / "lymphocyte"
    folder.mkdir(parents=True)
    for f in pbc_files("lymphocyte", 3):
        (folder / f.name).write_bytes(f.read_bytes())
    os.mkfifo(folder / "pipe.jpg")
    result = bmengine("eval", tmp_path / "data", "--model", tiny_model, "--json", timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 3  # the FIFO is never opened (the scan lists regular files; reads refuse others)
