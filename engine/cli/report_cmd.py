"""``bmengine report OUT``: rebuild differential.csv/.parquet and report.html from OUT's slide markers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

EXIT_USAGE = 2


def report(
    out: Annotated[Path, typer.Argument(help="An output folder of `bmengine run` (or of all its shards).")],
) -> None:
    """Rebuild the differential and the report from the finished slides in OUT, whichever run or
    shard classified them. Needs no model and no slide store; refused while a run writes into OUT."""
    from bmengine.engine.cli.console import esc
    from rich.console import Console

    from bmengine.engine import __version__
    from bmengine.engine.outputs.differential import write_differential
    from bmengine.engine.outputs.lock import OutputBusyError, OutputLock
    from bmengine.engine.outputs.rebuild import RebuildError, collect, run_records
    from bmengine.engine.outputs.report import write_report
    from bmengine.engine.taxonomy import get_taxonomy

    console = Console(stderr=True, soft_wrap=True, highlight=False)
    if not out.is_dir():
        console.print(f"[red]error:[/] {esc(out)} is not a folder")
        raise typer.Exit(EXIT_USAGE)
    try:
        with OutputLock(out):  # a run still writing would change what is being merged
            found = collect(out)
            records = [r for r in run_records(out) if (r.get("model") or {}).get("sha256") == found.model_sha256]
            latest = records[0] if records else {}
            taxonomy = get_taxonomy((latest.get("model") or {}).get("taxonomy") or latest.get("taxonomy") or "pbc-blood-8")
            info = {**latest, "warnings": [*(latest.get("warnings") or []), *found.skipped],
                    "model": latest.get("model") or {"sha256": found.model_sha256},
                    "crops_per_second": None, "rebuilt_from": f"{len(found.statuses)} slide markers"}
            versions = {row.get("bmengine_version") for row in found.rows}
            write_differential(found.rows, out, metadata={"model_sha256": found.model_sha256,
                                                          "bmengine_version": ",".join(sorted(map(str, versions)))})
            truth = {s["slide_id"]: s["known_mixture_pct"] for s in found.statuses if s.get("known_mixture_pct")}
            path = write_report(out, info, found.rows, found.statuses, taxonomy, truth=truth or None)
    except (OutputBusyError, RebuildError) as exc:
        console.print(f"[red]error:[/] {esc(exc)}")
        raise typer.Exit(EXIT_USAGE) from None
    failed = sum(s.get("status") == "failed" for s in found.statuses)
    console.print(f"{len(found.rows)} slides in the differential, {failed} failed (bmengine {__version__})")
    for note in found.skipped:
        console.print(f"  not used: {esc(note)}")
    console.print(f"differential: {esc(out / 'differential.csv')}\nreport: {esc(path)}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
