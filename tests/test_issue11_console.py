"""Issue 11, item 9: the console never named unreadable crops, and library noise reached it.

Now each slide names its first few unreadable crops with the reason, and the count of the rest;
DALI's and Dask's own output (C++ stderr, tracebacks, "Future exception was never retrieved")
goes to ``OUT/bmengine.log``.
"""

from __future__ import annotations

from cli_helpers import bmengine, crop_folder, ingest
from conftest import pbc_files


def test_unreadable_crops_are_named_and_noise_goes_to_the_log(tmp_path, tiny_model):
    crops = crop_folder(tmp_path / "crops", {"S1": {"neutrophil": 3}})
    good = pbc_files("lymphocyte", 1)[0].read_bytes()
    for i in range(5):  # truncated JPEGs: DALI fails them and prints its own messages to fd 2
        (crops / "S1" / f"broken_{i}.jpg").write_bytes(good[: 3000 + 200 * i])
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
    assert "bmengine.log" in result.stderr and "libjpeg_turbo_decoder" in log  # DALI's own words, kept
