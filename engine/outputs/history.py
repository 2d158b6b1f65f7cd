"""``run.json`` keeps every earlier run into the same OUT: a resume must not erase the first record."""

from __future__ import annotations

import json
from pathlib import Path

#: what each earlier run keeps (its per-slide list is in the slides' own markers)
SUMMARY_KEYS = ("started_at", "finished_at", "command", "bmengine_version", "wall_seconds", "crops_classified",
                "crops_per_second", "exit_code", "warnings")


def summarize_run(record: dict) -> dict:
    """The short form of one run's record, as it goes into its successors' history."""
    summary = {key: record.get(key) for key in SUMMARY_KEYS}
    summary["model_sha256"] = (record.get("model") or {}).get("sha256")
    statuses = [slide.get("status") for slide in record.get("slides") or []]
    summary["slides"] = {status: statuses.count(status) for status in sorted(set(statuses))}
    return summary


def run_history(record_path: Path) -> list[dict]:
    """The history for a new ``run.json`` at ``record_path``: the earlier one's history plus itself.
    An unreadable earlier record is kept as a note rather than silently dropped."""
    if not record_path.is_file():
        return []
    try:
        previous = json.loads(record_path.read_text(encoding="utf-8"))
        if not isinstance(previous, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return [{"unreadable_record": f"{record_path.name} could not be read: {exc}"}]
    earlier = previous.get("history")
    return (earlier if isinstance(earlier, list) else []) + [summarize_run(previous)]
