"""Per-slide completion markers: a run that was killed redoes only unfinished slides.

``OUT/<slide_id>/slide.json`` is written (atomically) after everything else of that slide. A slide
counts as done only when its marker says "ok", its ``cells.parquet`` exists, and the marker's
*resume key* equals the key of this run. The key covers everything that can change a cell's
result (docs/architecture.md, "Resume"):

- the store: its content fingerprint (per-cell arrays, attributes, the ingest-time checksums of
  the crop bytes), so a re-ingested or repaired store is redone;
- the model weights (sha256) and the whole model card (classes, preprocessing, anything added
  later), so an edited card -- or one restored after an edit -- is redone;
- ``RESULTS_VERSION``: bumped whenever the engine changes what a crop's result is (QC rules,
  decoding, limits semantics), not on every release;
- the input limits, which decide which crops are refused;
- the label map (``--label-map``), which decides the label and agreement columns.

A slide whose crops hit store damage is never "done": the damage may be repaired in place.
Anything less than done and the slide is redone from scratch, replacing its files: no cell is lost
or counted twice.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from bmengine.engine.outputs.atomic import atomic_write_text
from bmengine.engine.store.limits import InputLimits

MARKER = "slide.json"
RESULTS_VERSION = 2  # 1: bmengine 0.1; 2: limits, per-crop checksums, more QC flags


@dataclass(frozen=True)
class ResumeKey:
    store_hash: str
    model_sha256: str
    card_sha256: str
    results_version: int
    limits: dict
    label_map: dict  # the stores' labels -> model classes (changes the label and agreement columns)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def differences(self, record: dict) -> list[str]:
        """What changed since the marker was written, in words (empty when nothing did)."""
        old = record.get("resume") or {}
        words = {"store_hash": "the slide store", "model_sha256": "the model weights",
                 "card_sha256": "the model card", "results_version": "the engine's results version",
                 "limits": "the input limits", "label_map": "the label map"}
        return [text for name, text in words.items() if old.get(name) != getattr(self, name)]


def card_digest(card_path: Path) -> str:
    """sha256 of the card as JSON with sorted keys: reformatting it does not redo slides, any edit does."""
    data = json.loads(Path(card_path).read_text(encoding="utf-8"))
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def resume_key(store_hash: str, model_sha256: str, card_sha256: str, limits: InputLimits,
               label_map: dict | None = None) -> ResumeKey:
    return ResumeKey(store_hash, model_sha256, card_sha256, RESULTS_VERSION, asdict(limits), dict(label_map or {}))


def finished_record(slide_dir: Path, key: ResumeKey) -> tuple[dict | None, str | None]:
    """(the marker's record if the slide is done under ``key``, else why it must be redone).

    The reason is None when there is simply nothing to resume (no marker).
    """
    marker = slide_dir / MARKER
    if not marker.is_file():
        return None, None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None, "its marker is not valid JSON"
    if not isinstance(record, dict):
        return None, "its marker is not a record"
    if record.get("status") != "ok":
        return None, f"it ended '{record.get('status')}' last time"
    if not (slide_dir / "cells.parquet").is_file():
        return None, "its cells.parquet is missing"
    if record.get("n_damaged"):
        return None, "its store was damaged last time"
    if record.get("resume_key") != key.digest:
        changed = key.differences(record)
        return None, "changed since: " + (", ".join(changed) if changed else "the resume key")
    return record, None


def write_record(slide_dir: Path, record: dict, key: ResumeKey) -> None:
    record = {**record, "resume_key": key.digest, "resume": asdict(key)}
    atomic_write_text(slide_dir / MARKER, json.dumps(record, indent=2, default=str) + "\n")


def clear_slide(slide_dir: Path) -> None:
    """Remove a half-done slide's marker first, so a crash mid-way never looks finished."""
    marker = slide_dir / MARKER
    if marker.exists():
        marker.unlink()
