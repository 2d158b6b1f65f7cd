"""Per-slide completion markers: a run that was killed redoes only unfinished slides.

``OUT/<slide_id>/slide.json`` is written (atomically) after everything else of that slide, so its
presence with status "ok", the same model and the same store content means the slide is done.
Anything less and the slide is redone from scratch, replacing its files: no cell is lost or
counted twice.
"""

from __future__ import annotations

import json
from pathlib import Path

from bmengine.engine.outputs.atomic import atomic_write_text

MARKER = "slide.json"


def finished_record(slide_dir: Path, model_sha256: str, store_hash: str) -> dict | None:
    marker = slide_dir / MARKER
    if not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text())
    except json.JSONDecodeError:
        return None
    same = record.get("model_sha256") == model_sha256 and record.get("store_hash") == store_hash
    done = record.get("status") == "ok" and (slide_dir / "cells.parquet").is_file()
    return record if same and done else None


def write_record(slide_dir: Path, record: dict) -> None:
    atomic_write_text(slide_dir / MARKER, json.dumps(record, indent=2, default=str) + "\n")


def clear_slide(slide_dir: Path) -> None:
    """Remove a half-done slide's marker first, so a crash mid-way never looks finished."""
    marker = slide_dir / MARKER
    if marker.exists():
        marker.unlink()
