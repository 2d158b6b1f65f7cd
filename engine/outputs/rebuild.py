"""``bmengine report OUT``: differential + report rebuilt from the slide markers in OUT.

Every finished slide leaves ``OUT/<slide>/slide.json`` holding its differential row, so the
archive-level outputs can be rebuilt from the markers alone, whichever run or shard wrote them,
without opening a store or loading a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from bmengine.engine.pipeline.resume import MARKER


class RebuildError(ValueError):
    """OUT holds nothing a report can be built from, or slides from more than one model."""


@dataclass
class Finished:
    rows: list[dict] = field(default_factory=list)
    statuses: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # markers that were not used, with the reason
    model_sha256: str = ""


STATUS_KEYS = ("slide_id", "store", "status", "n_crops", "n_errors", "seconds", "error", "error_examples",
               "domain_warning", "known_mixture_pct")


def _store_order(record: dict) -> str:
    """Runs visit stores sorted by their folder name; a rebuilt report keeps that order."""
    return Path(str(record.get("store", ""))).name or str(record.get("slide_id", ""))


def collect(out_dir: Path) -> Finished:
    """The rows of the finished slides in ``out_dir`` and every slide's status, in store order."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise RebuildError(f"{out_dir} is not a folder")
    found = Finished()
    records = []
    for marker in sorted(out_dir.glob(f"*/{MARKER}")):
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            found.skipped.append(f"{marker}: unreadable ({exc})")
            continue
        if record.get("status") == "ok" and not (marker.parent / "cells.parquet").is_file():
            found.skipped.append(f"{marker}: its cells.parquet is missing")
            continue
        records.append(record)
    records.sort(key=_store_order)
    models: dict[str, list[str]] = {}
    for record in records:
        found.statuses.append({key: record.get(key) for key in STATUS_KEYS})
        if record.get("status") == "ok":
            found.rows.append(record["row"])
            models.setdefault(str(record.get("model_sha256")), []).append(str(record.get("slide_id")))
    if len(models) > 1:
        listing = "; ".join(f"{sha[:12]}: {len(ids)} slides (e.g. {ids[0]})" for sha, ids in models.items())
        raise RebuildError(f"{out_dir}: its slides were classified by different models ({listing}); "
                           "re-run the odd ones with one model, or report them from separate folders")
    if not found.rows:
        raise RebuildError(f"{out_dir}: no finished slide (no */{MARKER} with status ok); run `bmengine run` first")
    found.model_sha256 = next(iter(models))
    return found


def run_records(out_dir: Path) -> list[dict]:
    """The run records in OUT (``run.json`` and each shard's), newest first."""
    records = []
    for path in sorted(Path(out_dir).glob("run*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            records.append(record)
    return sorted(records, key=lambda r: str(r.get("finished_at", "")), reverse=True)
