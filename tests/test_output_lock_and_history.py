"""Issue 12, item 4 (part): one run per OUT at a time, a killed run's lock is recognised as stale,
and run.json keeps the history of every run into the same OUT (a resume no longer erases it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bmengine.engine.outputs.lock import LOCK_NAME, OutputBusyError, OutputLock
from cli_helpers import bmengine, crop_folder, ingest

HOLD = """
import sys, time
from pathlib import Path
from bmengine.engine.outputs.lock import OutputLock
with OutputLock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def _holder(out: Path) -> subprocess.Popen:
    """A real second process that holds OUT's lock (as a run in progress would)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lock")
    crops = crop_folder(root / "crops", {"s1": {"lymphocyte": 3, "neutrophil": 3}, "s2": {"monocyte": 4}})
    ingest(crops, root / "slides")
    return root / "slides"


def test_a_second_run_into_a_busy_out_is_refused_naming_the_holder(slides, tiny_model, tmp_path):
    out = tmp_path / "out"
    holder = _holder(out)
    try:
        result = bmengine("run", slides, "--model", tiny_model, "--out", out)
        assert result.returncode == 2, result.stdout + result.stderr
        text = " ".join((result.stdout + result.stderr).split())
        assert "another run is writing here" in text
        assert f"pid {holder.pid} on {socket.gethostname()}" in text
        assert not (out / "run.json").exists() and not (out / "s1").exists()  # it wrote nothing
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_runs_lock_is_stale_and_the_next_run_says_so(slides, tiny_model, tmp_path):
    out = tmp_path / "out"
    holder = _holder(out)
    holder.send_signal(signal.SIGKILL)  # no clean-up runs: the lock file still names it
    holder.wait()
    assert str(holder.pid) in (out / LOCK_NAME).read_text()
    result = bmengine("run", slides, "--model", tiny_model, "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    record = json.loads((out / "run.json").read_text())
    assert any(f"pid {holder.pid}" in w and "did not finish" in w for w in record["warnings"])
    assert (out / LOCK_NAME).read_text() == ""  # this run finished cleanly: nothing stale next time


def test_the_lock_is_per_folder_and_released_when_the_block_ends(tmp_path):
    with OutputLock(tmp_path / "a"):
        with OutputLock(tmp_path / "b"):
            pass
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}"):
            with OutputLock(tmp_path / "a"):  # a second open file description: flock refuses it too
                pass
    with OutputLock(tmp_path / "a") as again:
        assert again.stale is None


def test_a_resume_keeps_the_first_runs_record_in_history(slides, tiny_model, tmp_path):
    out = tmp_path / "out"
    first = bmengine("run", slides, "--model", tiny_model, "--out", out)
    assert first.returncode == 0, first.stdout + first.stderr
    record1 = json.loads((out / "run.json").read_text())
    assert record1["history"] == [] and record1["crops_per_second"] > 0 and record1["crops_classified"] == 10

    time.sleep(1.1)  # distinct started_at
    second = bmengine("run", slides, "--model", tiny_model, "--out", out)
    assert second.returncode == 0
    assert "nothing left to classify" in " ".join((second.stdout + second.stderr).split())
    record2 = json.loads((out / "run.json").read_text())
    assert record2["crops_classified"] == 0 and record2["crops_per_second"] is None
    assert [s["status"] for s in record2["slides"]] == ["skipped", "skipped"]
    (earlier,) = record2["history"]
    assert earlier["started_at"] == record1["started_at"]
    assert earlier["crops_per_second"] == record1["crops_per_second"]
    assert earlier["slides"] == {"ok": 2} and earlier["model_sha256"] == record1["model"]["sha256"]

    bmengine("run", slides, "--model", tiny_model, "--out", out)
    record3 = json.loads((out / "run.json").read_text())
    assert [h["started_at"] for h in record3["history"]] == [record1["started_at"], record2["started_at"]]
