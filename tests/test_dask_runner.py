"""Issue 12, items 1-2: whole slides on the workers of a real Dask cluster, as paths.

Two clusters, both real: the local worker processes `--workers 2` starts, and a `dask scheduler`
with two `dask worker` processes started here on 127.0.0.1. Results must equal the in-process
runner's cell for cell, and a worker SIGKILLed in the middle of a slide must lose and duplicate
nothing: the scheduler gives that slide to the other worker, which redoes it from scratch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cli_helpers import BMENGINE, bmengine, crop_folder, ingest

SLIDES = {"a1": {"lymphocyte": 5, "neutrophil": 4}, "a2": {"monocyte": 4, "eosinophil": 3},
          "a3": {"neutrophil": 6, "ig": 2}, "a4": {"basophil": 3, "platelet": 4}}
BIG = {"big": {cls: 60 for cls in ("lymphocyte", "neutrophil", "monocyte", "eosinophil", "ig")}}  # 300 crops


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dask-archive")
    ingest(crop_folder(root / "crops", SLIDES), root / "slides")
    return root / "slides"


@pytest.fixture(scope="module")
def local_result(archive, tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    result = bmengine("run", archive, "--model", tiny_model, "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def _same_cells(out: Path, expected: Path, slides) -> None:
    for slide in slides:
        got = pd.read_parquet(out / slide / "cells.parquet")
        want = pd.read_parquet(expected / slide / "cells.parquet")
        assert got["cell_index"].tolist() == list(range(len(want)))  # every cell once, none twice
        pd.testing.assert_frame_equal(got, want)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_local_worker_processes_give_the_in_process_results_cell_for_cell(archive, tiny_model, local_result,
                                                                          tmp_path):
    out = tmp_path / "out"
    result = bmengine("run", archive, "--model", tiny_model, "--out", out, "--workers", "2", "--threads", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    _same_cells(out, local_result, SLIDES)
    pd.testing.assert_frame_equal(pd.read_csv(out / "differential.csv"), pd.read_csv(local_result / "differential.csv"))
    record = json.loads((out / "run.json").read_text())
    assert record["runner"] == "dask"
    workers = {slide["worker"] for slide in record["slides"]}
    assert workers and "local" not in workers and "" not in workers
    assert {s["worker"] for s in json.loads((local_result / "run.json").read_text())["slides"]} == {"local"}


@pytest.fixture
def cluster(tmp_path):
    """A real `dask scheduler` and two `dask worker` processes (no nanny: a killed worker stays dead)."""
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    log = open(tmp_path / "cluster.log", "w")
    procs = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                               "--port", str(port), "--dashboard-address", ":0"], stdout=log, stderr=log, env=env)]
    from distributed import Client

    client = Client(address, timeout="60s")
    for name in ("w1", "w2"):
        procs.append(subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                                       "--no-nanny", "--name", name, "--host", "127.0.0.1"],
                                      stdout=log, stderr=log, env=env))
    client.wait_for_workers(2, timeout=120)
    try:
        yield address, client
    finally:
        client.close()
        for proc in reversed(procs):
            proc.kill()
            proc.wait()
        log.close()


def test_an_existing_scheduler_and_its_workers_give_the_same_results(archive, tiny_model, local_result, tmp_path,
                                                                    cluster):
    address, _ = cluster
    out = tmp_path / "out"
    result = bmengine("run", archive, "--model", tiny_model, "--out", out, "--scheduler", address, "--threads", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    _same_cells(out, local_result, SLIDES)
    record = json.loads((out / "run.json").read_text())
    assert {slide["worker"] for slide in record["slides"]} <= {"w1", "w2"}


def test_a_worker_killed_mid_slide_loses_and_duplicates_nothing(tiny_model, tmp_path, cluster):
    address, client = cluster
    ingest(crop_folder(tmp_path / "crops", {**BIG, **SLIDES}), tmp_path / "slides")
    expected = tmp_path / "expected"
    assert bmengine("run", tmp_path / "slides", "--model", tiny_model, "--out", expected).returncode == 0

    out = tmp_path / "out"
    run = subprocess.Popen(BMENGINE + ["run", str(tmp_path / "slides"), "--model", str(tiny_model), "--out", str(out),
                                       "--scheduler", address, "--threads", "1", "--batch-size", "4"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids = client.run(os.getpid)  # worker address -> pid
    names = {info["id"]: addr for addr, info in client.scheduler_info()["workers"].items()}
    victim = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline:
        # the big slide has started (its folder exists) and is not finished (no marker yet)
        if (out / "big").is_dir() and not (out / "big" / "slide.json").exists():
            holders = [addr for addr, keys in client.processing().items() if any("-big-" in str(k) for k in keys)]
            if holders:
                victim = holders[0]
        time.sleep(0.05)
    assert victim is not None, "the big slide was never seen in progress"
    os.kill(pids[victim], signal.SIGKILL)
    killed = next(name for name, addr in names.items() if addr == victim)

    output = run.communicate(timeout=300)[0]
    assert run.returncode == 0, output
    record = json.loads((out / "run.json").read_text())
    by_slide = {slide["slide_id"]: slide for slide in record["slides"]}
    assert by_slide["big"]["status"] == "ok" and by_slide["big"]["worker"] != killed  # redone elsewhere
    _same_cells(out, expected, ["big", *SLIDES])
    pd.testing.assert_frame_equal(pd.read_csv(out / "differential.csv"), pd.read_csv(expected / "differential.csv"))
