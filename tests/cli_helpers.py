"""Run the real ``bmengine`` CLI in a subprocess, and build small slide stores from real crops."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import BMENGINE, pbc_files

KILL_AFTER = [sys.executable, str(Path(__file__).with_name("kill_after_crops.py"))]


def bmengine(*args, timeout: float = 240, prefix: list[str] | None = None,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run((prefix or BMENGINE) + [str(a) for a in args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def crop_folder(root: Path, slides: dict[str, dict[str, int]], offset: int = 200) -> Path:
    """``root/<slide>/<class>_<file>.jpg``: real PBC crops, ``n`` per class per slide."""
    for slide, mix in slides.items():
        folder = root / slide
        folder.mkdir(parents=True, exist_ok=True)
        for cls, n in mix.items():
            for f in pbc_files(cls, n, offset=offset):
                shutil.copy(f, folder / f"{cls}_{f.name}")
    return root


def ingest(crops: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    result = bmengine("ingest", crops, "--out", out, *extra)
    assert result.returncode in (0, 1), result.stdout + result.stderr
    return result
