"""Issue 11, item 9: the console never named unreadable crops, and library noise reached it.

Now each slide names its first few unreadable crops with the reason, and the count of the rest;
DALI's and Dask's own output (C++ stderr, tracebacks, "Future exception was never retrieved")
goes to ``OUT/bmengine.log``.
"""

from __future__ import annotations

from cli_helpers import bmengine, crop_folder, ingest
from bmengine.engine.qc.damage import scan_bounds
from conftest import pbc_files


def test_unreadable_crops_are_named_and_noise_goes_to_the_log(tmp_path, tiny_model):
    crops = crop_folder(tmp_path / "crops", {"S1": {"neutrophil": 3}})
    good = pbc_files("lymphocyte", 1)[0].read_bytes()
    for i in range(3):  # cut short: the engine refuses them before decoding (engine/store/image_header.py)
        (crops / "S1" / f"broken_{i}.jpg").write_bytes(good[: 3000 + 200 * i])
    scan = scan_bounds(good)[0]
    for i in (3, 4):  # a scan header overwritten: DALI fails them and prints its own messages to fd 2
        (crops / "S1" / f"broken_{i}.jpg").write_bytes(good[: scan - 4 - i] + b"\xff" * (4 + i) + good[scan:])
    ingest(crops, tmp_path / "slides")
    out = tmp_path / "out"
    result = bmengine("run", tmp_path / "slides", "--model", tiny_model, "--out", out, "--batch-size", "4")
    assert result.returncode == 3, result.stderr
    named = [line for line in result.stderr.splitlines() if "broken_" in line]
    assert len(named) == 3 and all("JPEG truncated" in line for line in named), result.stderr
    assert "and 2 more" in result.stderr
    for noise in ("[ERROR]", "libjpeg", "nvImageCodec", "Traceback", "Future exception", "distributed."):
        assert noise not in result.stderr, noise
    log = (out / "bmengine.log").read_text()
    assert "bmengine.log" in result.stderr and "Invalid component ID" in log  # libjpeg-turbo's own words, via DALI, kept
