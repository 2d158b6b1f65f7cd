"""Issue 12, item 4 (part): `--shard i/n` splits an archive deterministically, the shards of one
split run side by side into one OUT, and `bmengine report OUT` merges them into exactly the
differential of one whole run."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bmengine.engine.pipeline.shard import Shard
from cli_helpers import BMENGINE, bmengine, crop_folder, ingest

SLIDES = {"p1": {"lymphocyte": 4, "neutrophil": 3}, "p2": {"monocyte": 3, "eosinophil": 2},
          "p3": {"neutrophil": 5}, "p4": {"lymphocyte": 2, "basophil": 2}, "p5": {"platelet": 3, "ig": 2}}


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shards")
    ingest(crop_folder(root / "crops", SLIDES), root / "slides")
    return root / "slides"


def test_shards_partition_the_stores_exactly_once():
    stores = [Path(f"s{i:03d}.zarr") for i in range(23)]
    shares = [Shard(i, 4).select(list(reversed(stores))) for i in range(4)]
    assert sorted(p for share in shares for p in share) == stores  # every store once, whatever the listing order
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    for bad in ("4/4", "-1/4", "1/0", "a/b", "1"):
        with pytest.raises(ValueError, match="--shard"):
            Shard.parse(bad)


def test_shards_merged_by_report_equal_one_whole_run(archive, tiny_model, tmp_path):
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    assert bmengine("run", archive, "--model", tiny_model, "--out", whole).returncode == 0
    # the two shards of one split run at the same time into one OUT
    procs = [subprocess.Popen(BMENGINE + ["run", str(archive), "--model", str(tiny_model), "--out", str(sharded),
                                          "--shard", f"{i}/2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not (sharded / "differential.csv").exists()  # left to `report`
    assert sorted(p.name for p in sharded.glob("run.*.json")) == ["run.shard-0-of-2.json", "run.shard-1-of-2.json"]

    merged = bmengine("report", sharded)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    assert "5 slides in the differential" in " ".join((merged.stdout + merged.stderr).split())
    expected = pd.read_csv(whole / "differential.csv")
    got = pd.read_csv(sharded / "differential.csv")
    assert list(got["slide_id"]) == ["p1", "p2", "p3", "p4", "p5"]
    pd.testing.assert_frame_equal(got, expected)
    for slide in SLIDES:  # and cell for cell
        pd.testing.assert_frame_equal(pd.read_parquet(sharded / slide / "cells.parquet"),
                                      pd.read_parquet(whole / slide / "cells.parquet"))
    html = (sharded / "report.html").read_text()
    assert all(f">{slide}" in html for slide in SLIDES)


def test_report_rebuilds_a_whole_runs_outputs_and_refuses_mixed_models(archive, tiny_model, tmp_path):
    out = tmp_path / "out"
    assert bmengine("run", archive, "--model", tiny_model, "--out", out).returncode == 0
    before = pd.read_csv(out / "differential.csv")
    (out / "differential.csv").unlink()
    assert bmengine("report", out).returncode == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "differential.csv"), before)

    marker = out / "p2" / "slide.json"
    marker.write_text(marker.read_text().replace(before["model_sha256"][0], "0" * 64))
    refused = bmengine("report", out)
    assert refused.returncode == 2
    assert "different models" in " ".join(refused.stderr.split())


def test_whole_runs_and_other_splits_are_refused_while_shards_run(archive, tmp_path):
    from bmengine.engine.outputs.lock import OutputBusyError, OutputLock

    out = tmp_path / "out"
    with OutputLock(out, Shard(0, 2).name):
        with OutputLock(out, Shard(1, 2).name):  # the same split: side by side
            pass
        with pytest.raises(OutputBusyError, match="shard runs shard-0-of-2"):
            with OutputLock(out):  # a whole run, or `bmengine report`
                pass
        with pytest.raises(OutputBusyError, match="another split"):
            with OutputLock(out, Shard(0, 3).name):
                pass
        with pytest.raises(OutputBusyError):
            with OutputLock(out, Shard(0, 2).name):  # the same shard twice
                pass
    with OutputLock(out):
        pass
