"""Shared fixtures: real crops from ../shared/data and a real trained + exported model.

The model (``tiny_model``) is committed under tests/assets, made by tests/assets/make_test_model.py:
the engine's tests run without PyTorch. Only tests of training and export themselves train one
(``trained_run``, which needs the [train] extra).
"""

from __future__ import annotations

import csv
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# `make test` runs one worker per core and each training test starts CLIs with 2 threads: OpenMP threads
# that spin while they wait take the cores from the other worker (a fresh clone's suite on 2 AMD EPYC
# cores: 767 s spinning, 685 s waiting passively). Set before torch starts its threads; the CLIs inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().parent / "assets"
DATA = REPO.parent / "shared" / "data"
PBC = DATA / "pbc"
BM = DATA / "bm_samples"
BMENGINE = [sys.executable, "-m", "bmengine.engine.cli.app"]


def _load_script(name: str):
    """A script of tests/assets as a module (it is not a package: the scripts run on their own)."""
    spec = importlib.util.spec_from_file_location(name, ASSETS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TEST_MODEL = _load_script("make_test_model")


def pbc_files(cls: str, n: int, offset: int = 0) -> list[Path]:
    """The first ``n`` crops of a PBC class, sorted (a stable, real sample)."""
    files = sorted((PBC / cls).glob("*.jpg"))[offset : offset + n]
    assert len(files) == n, f"need {n} crops of {cls} in {PBC}"
    return files


def pytest_sessionstart(session):
    """The suite runs on real crops: without them it stops with the reason instead of skipping green."""
    if not PBC.is_dir():
        pytest.exit(f"real crops not found at {PBC}: put shared/ (with data/pbc) beside the repo", returncode=4)


@pytest.fixture(scope="session")
def pbc_subset(tmp_path_factory) -> Path:
    """A class-per-folder copy of 12 real crops per PBC class (nested like Matek's TCIA layout)."""
    root = tmp_path_factory.mktemp("pbc_subset")
    for cls in sorted(p.name for p in PBC.iterdir() if p.is_dir()):
        target = root / cls / "0001-1000"
        target.mkdir(parents=True)
        for f in pbc_files(cls, 12):
            (target / f.name).write_bytes(f.read_bytes())
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The committed test model (MultiScaleCrossAttentionNet at 64 px, trained on a PBC subset, see
    tests/assets/make_test_model.py), copied so tests may write beside it.

    Returns the int8 ONNX path; the fp32 ``tiny.onnx`` sits beside it; both carry cards.
    """
    export = tmp_path_factory.mktemp("tiny_model") / "export"
    export.mkdir()
    for name in TEST_MODEL.MODEL_FILES:
        shutil.copy(ASSETS / name, export / name)
    return export / "tiny_int8.onnx"


@pytest.fixture(scope="session")
def tiny_model_data(tmp_path_factory) -> Path:
    """The PBC subset the test model was trained on (links to ../shared/data), laid out as it was."""
    return TEST_MODEL.build_subset(PBC, tmp_path_factory.mktemp("tiny_model_data") / "data")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, pbc_subset) -> Path:
    """A model trained here for 2 short epochs with `bmengine train` and exported with `bmengine
    export`, for the tests of training and export themselves (checkpoint in ``parents[1]``).

    Returns the int8 ONNX path (fp32 ``tiny.onnx`` beside it); both carry cards.
    """
    pytest.importorskip("torch", reason="training needs the [train] extra")
    run = tmp_path_factory.mktemp("tiny_run")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    subprocess.run(BMENGINE + ["train", str(pbc_subset), "--out", str(run), "--backbone", "regnetx_002",
                               "--epochs", "2", "--batch-size", "16", "--resize", "72", "--crop", "64",
                               "--max-steps-per-epoch", "3"], check=True, env=env, capture_output=True)
    out = run / "export" / "tiny.onnx"
    subprocess.run(BMENGINE + ["export", str(run / "checkpoints" / "last.pt"), "--out", str(out),
                               "--calibration-images", "32"], check=True, env=env, capture_output=True)
    return out.with_name("tiny_int8.onnx")


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
