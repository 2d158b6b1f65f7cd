"""Issue 14, item 9: a fault-injection variable read by production code made every later run die
when left exported in a shell. Fault injection now lives in tests/kill_after_crops.py only."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cli_helpers import KILL_AFTER, crop_folder, ingest
from conftest import BMENGINE, REPO


def test_no_engine_module_reads_a_fault_variable():
    sources = [p for p in (REPO / "engine").rglob("*.py")]
    assert sources
    offenders = [p for p in sources if any(word in p.read_text() for word in ("_FAULT", "SIGKILL", "os.kill("))]
    assert offenders == []


def test_the_old_variable_left_exported_does_nothing(tmp_path, tiny_model):
    ingest(crop_folder(tmp_path / "crops", {"S": {"platelet": 3}}), tmp_path / "slides")
    env = {**os.environ, "BMENGINE_FAULT_KILL_AFTER_CROPS": "1"}
    result = subprocess.run(BMENGINE + ["run", str(tmp_path / "slides"), "--model", str(tiny_model),
                                        "--out", str(tmp_path / "out")], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_the_test_launcher_does_kill_a_run_mid_way(tmp_path, tiny_model):
    ingest(crop_folder(tmp_path / "crops", {"A": {"platelet": 4}, "B": {"basophil": 4}}), tmp_path / "slides")
    out = tmp_path / "out"
    killed = subprocess.run(KILL_AFTER + ["6", "run", str(tmp_path / "slides"), "--model", str(tiny_model),
                                          "--out", str(out), "--batch-size", "2"], capture_output=True, text=True)
    assert killed.returncode == -9
    assert json.loads((out / "A" / "slide.json").read_text())["status"] == "ok"
    assert not (out / "B" / "slide.json").exists() and not Path(out / "run.json").exists()
