"""One self-contained ``report.html`` per run, written for the morphologist who signs the differential.

Self-contained means it survives being e-mailed or archived: inline CSS, histograms as base64
SVG data URIs, no scripts, no external assets. Every piece of text from outside (slide ids, error
messages, model names) is HTML-escaped.

Each histogram is drawn once, when its slide is written (``<slide>/histogram.svg``); the report
inlines those bytes. An archive of more than ``INLINE_SLIDES`` slides gets an index instead: the
summary table, each slide linking to its own histogram beside the report, so a 10,000-slide
report stays a few MB and is built without drawing anything.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from bmengine.engine.outputs.atomic import atomic_write_bytes
from bmengine.engine.outputs.differential import derived_columns, figure_interval_kind
from bmengine.engine.outputs.plots import HISTOGRAM_NAME, histogram_svg
from bmengine.engine.taxonomy import Taxonomy

REPORT_NAME = "report.html"
INLINE_SLIDES = 200  # above this, the report is an index whose slides link to <slide>/histogram.svg
DASH = "\u2014"

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f4f7; } td.text, th.text { text-align: left; }
tr.excluded td { color: #666; background: #fafafa; }
.status-ok { color: #1e7e34; font-weight: bold; } .status-failed { color: #b02a37; font-weight: bold; }
.status-skipped { color: #6c757d; font-weight: bold; }
.meta td:first-child { text-align: left; font-weight: bold; background: #f8f9fa; }
.mono { font-family: Menlo, Consolas, monospace; font-size: 0.85em; word-break: break-all; }
.note { color: #555; font-size: 0.85em; } img { max-width: 100%; border: 1px solid #eee; }
.domain-warning { background: #fff3cd; border-left: 4px solid #b58105; padding: 0.5em; }
pre.error { background: #fff4f4; border-left: 3px solid #b02a37; padding: 0.5em; white-space: pre-wrap; }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: object) -> float:
    try:
        return math.nan if value is None else float(value)
    except (TypeError, ValueError):
        return math.nan


def fmt_pct(value: object, digits: int = 1) -> str:
    """'12.3', or an em dash when there is nothing to show."""
    v = _num(value)
    return f"{v:.{digits}f}" if math.isfinite(v) else DASH


def fmt_ci(low: object, high: object) -> str:
    """'12.3–18.9' (en dash); an unbounded upper end shows as ∞."""
    lo, hi = _num(low), _num(high)
    if math.isnan(lo) or math.isnan(hi):
        return DASH
    return f"{lo:.1f}\u2013{'∞' if math.isinf(hi) else f'{hi:.1f}'}"


def _tr(cells: list[str], text_columns: int = 1, cls: str = "") -> str:
    """A table row; the first ``text_columns`` cells are left-aligned text, the rest numbers."""
    attr = f' class="{cls}"' if cls else ""
    tds = (f"<td class='text'>{c}</td>" if i < text_columns else f"<td>{c}</td>" for i, c in enumerate(cells))
    return f"<tr{attr}>" + "".join(tds) + "</tr>"


def _table(header: list[str], body: list[str], cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    head = "".join(f"<th>{h}</th>" for h in header)
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _status(status: str) -> str:
    return f'<span class="status-{_e(status)}">{_e(status)}</span>'


def slide_truth(slide_id: str, row: dict | None, taxonomy: Taxonomy,
                truth: dict[str, dict[str, float]] | None) -> tuple[dict[str, float] | None, str]:
    """Known truth in percent and where it came from: the run's ``truth`` first, then the labels.

    A ``truth`` entry describes a whole known mixture, so classes it does not name are 0%.
    """
    if truth and isinstance(truth.get(slide_id), dict):
        given = truth[slide_id]
        return {c: float(given.get(c, 0.0)) for c in taxonomy.classes}, "known mixture"
    if row is not None and any(math.isfinite(_num(row.get(f"true_pct_{c}"))) for c in taxonomy.classes):
        return {c: _num(row.get(f"true_pct_{c}")) for c in taxonomy.classes}, "labels"
    return None, ""


def _header(run_info: dict, taxonomy: Taxonomy, statuses: list[dict]) -> str:
    model = run_info.get("model") or {}
    tally = {s: sum(1 for x in statuses if x.get("status") == s) for s in ("ok", "skipped", "failed")}
    rows = [
        ("Model", _e(model.get("name"))),
        ("Model sha256", f'<span class="mono">{_e(model.get("sha256"))}</span>'),
        ("Model file", f'<span class="mono">{_e(model.get("path"))}</span>'),
        ("bmengine version", _e(run_info.get("bmengine_version"))),
        ("Taxonomy", f"{_e(taxonomy.name)} {DASH} {_e(taxonomy.description)}"),
        ("Differential base", _e(taxonomy.base_description or ", ".join(taxonomy.counted))),
        ("Started / finished", f"{_e(run_info.get('started_at'))} / {_e(run_info.get('finished_at'))}"),
        ("Throughput", f"{fmt_pct(run_info.get('crops_per_second'))} crops/s"),
        ("Slides", f"{tally['ok']} classified, {tally['skipped']} already done, {tally['failed']} failed"),
    ]
    rows += [("Warning", _e(text)) for text in run_info.get("warnings") or []]
    body = "".join(f"<tr><td>{k}</td><td class='text'>{v}</td></tr>" for k, v in rows)
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return (f"<h1>bmengine differential report</h1><p class='note'>Report written {_e(made)}.</p>"
            f"<table class='meta'><tbody>{body}</tbody></table>")


def _figure_label(figure) -> str:
    return _e(figure.description or figure.name)


def _figure_value(figure, value: object) -> str:
    return f"{_num(value):.2f}" if figure.kind == "ratio" and math.isfinite(_num(value)) else fmt_pct(value)


def _summary(entries: list[tuple[str, dict]], rows: dict[str, dict], taxonomy: Taxonomy, index: bool = False) -> str:
    """One line per store in run order; a failed store shows no counts, even if its slide id has some
    (two stores with one id: the first ran, the second failed, and each row says so)."""
    header = ["Slide", "Patient", "Status", "Crops", "Counted", "Errors", "QC-flagged", "Seconds"]
    header += [_e(f.name) for f in taxonomy.derived]
    body = []
    anchors = {sid: i for i, sid in enumerate(rows)}
    for slide_id, status in entries:
        row = rows.get(slide_id, {}) if status.get("status") != "failed" else {}
        target = f"{_e(slide_id)}/{HISTOGRAM_NAME}" if index else f"#slide-{anchors.get(slide_id)}"
        link = f'<a href="{target}">{_e(slide_id)}</a>' if row else _e(slide_id)
        cells = [link, _e(row.get("patient_id") or DASH), _status(status.get("status", "ok")),
                 _e(row.get("n_crops", status.get("n_crops", DASH))), _e(row.get("n_cells", DASH)),
                 _e(row.get("n_errors", status.get("n_errors", DASH))), _e(row.get("n_flagged", DASH)),
                 fmt_pct(status.get("seconds"))]
        cells += [_figure_value(f, row.get(f.name)) for f in taxonomy.derived]
        body.append(_tr(cells, text_columns=3))
    return "<h2>Slides</h2>" + _table(header, body)


def _display_order(taxonomy: Taxonomy) -> list[str]:
    """Base classes first, then the excluded ones (as in the histogram)."""
    return list(taxonomy.counted) + [c for c in taxonomy.classes if c in taxonomy.excluded]


def _class_table(row: dict, taxonomy: Taxonomy, truth: dict[str, float] | None, source: str) -> str:
    level = round(100 * _num(row.get("ci_level", 0.95)))
    adjusted = math.isfinite(_num(row.get(f"adj_pct_{taxonomy.classes[0]}")))
    header = ["Class", "Count", "%", f"{level}% CI"] + (["Adjusted %", f"{level}% CI incl. model error"] if adjusted else [])
    header += ([f"Known % ({_e(source)})"] if truth else []) + ["Soft %"]
    body = []
    for c in _display_order(taxonomy):
        name = _e(c) + (f" <span class='note'>({_e(taxonomy.class_descriptions[c])})</span>"
                        if taxonomy.class_descriptions.get(c, c) != c else "")
        cells = [name, _e(row.get(f"count_{c}", 0)), fmt_pct(row.get(f"pct_{c}")),
                 fmt_ci(row.get(f"ci_low_{c}"), row.get(f"ci_high_{c}"))]
        if adjusted:
            cells += [fmt_pct(row.get(f"adj_pct_{c}")), fmt_ci(row.get(f"adj_ci_low_{c}"), row.get(f"adj_ci_high_{c}"))]
        cells += [fmt_pct(truth.get(c))] if truth else []
        cells.append(fmt_pct(row.get(f"soft_pct_{c}")))
        body.append(_tr(cells, cls="excluded" if c in taxonomy.excluded else ""))
    note = ("<p class='note'>% = per 100 base cells (" + _e(taxonomy.base_description or "the differential base")
            + "). Grey rows are outside the base and reported per 100 base cells. CI: exact Clopper-Pearson "
            "(CLSI H20-A2 / Rümke), sampling error only. Adjusted %: corrected for the model's own "
            "misclassification rates on its validation split, with an interval that carries both sampling "
            "and model error (docs/differential.md). Soft %: model probabilities summed over counted cells.</p>")
    return _table(header, body) + note


def _derived_table(row: dict, taxonomy: Taxonomy, truth: dict[str, float] | None) -> str:
    if not taxonomy.derived:
        return ""
    known = derived_columns(truth, taxonomy, 0.95, with_ci=False) if truth else {}
    level = round(100 * _num(row.get("ci_level", 0.95)))
    header = ["Figure", "Value", f"{level}% CI"] + (["Known"] if truth else [])
    body = []
    for f in taxonomy.derived:
        ci = (fmt_ci(row.get(f"{f.name}_ci_low"), row.get(f"{f.name}_ci_high"))
              if figure_interval_kind(f, taxonomy) else DASH)
        cells = [_figure_label(f), _figure_value(f, row.get(f.name)), ci]
        cells += [_figure_value(f, known.get(f.name))] if truth else []
        body.append(_tr(cells))
    return "<h3>Derived figures</h3>" + _table(header, body)


def _counts_line(row: dict, status: dict) -> str:
    parts = [f"{_e(row.get('n_crops'))} crops", f"{_e(row.get('n_cells'))} counted",
             f"{_e(row.get('n_base'))} in the base", f"{_e(row.get('n_errors'))} errors",
             f"{_e(row.get('n_flagged'))} QC-flagged"]
    if row.get("n_unknown"):
        parts.insert(-1, f"{_e(row.get('n_unknown'))} unlike the training data ({fmt_pct(row.get('pct_unknown'))}%)")
    if row.get("qc_flag_counts"):
        parts[-1] += f" ({_e(row['qc_flag_counts'])})"
    if math.isfinite(_num(row.get("agreement"))):
        parts.append(f"agreement with labels {fmt_pct(100 * _num(row['agreement']))}% "
                     f"of {_e(row.get('n_labelled'))} labelled cells")
    if status.get("seconds") is not None:
        parts.append(f"{fmt_pct(status.get('seconds'))} s")
    return "<p>" + " · ".join(parts) + "</p>"


def histogram_title(slide_id: str, row: dict) -> str:
    return f"{slide_id} ({row.get('n_cells', 0)} cells counted)"


def _slide_section(index: int, slide_id: str, row: dict, status: dict, taxonomy: Taxonomy,
                   truth: dict[str, dict[str, float]] | None, drawn: bytes | None) -> str:
    known, source = slide_truth(slide_id, row, taxonomy, truth)
    svg = drawn or histogram_svg(row, taxonomy, histogram_title(slide_id, row), known).encode("utf-8")
    image = (f'<img alt="cell histogram of {_e(slide_id)}" '
             f'src="data:image/svg+xml;base64,{base64.b64encode(svg).decode()}">')
    patient = f" {DASH} patient {_e(row['patient_id'])}" if row.get("patient_id") else ""
    warning = (f"<p class='domain-warning'><b>Domain warning:</b> {_e(row['domain_warning'])}</p>"
               if row.get("domain_warning") else "")
    return (f'<section id="slide-{index}"><h2>{_e(slide_id)}{patient} {_status(status.get("status", "ok"))}</h2>'
            + warning + _counts_line(row, status) + image + _class_table(row, taxonomy, known, source)
            + _derived_table(row, taxonomy, known) + "</section>")


def _failures(statuses: list[dict]) -> str:
    failed = [s for s in statuses if s.get("status") == "failed"]
    if not failed:
        return "<h2>Failed slides</h2><p>No slide failed.</p>"
    items = "".join(f"<li><b>{_e(s.get('slide_id'))}</b>"
                    f"<pre class='error'>{_e(s.get('error') or 'unknown error')}</pre></li>" for s in failed)
    return f"<h2>Failed slides</h2><ul>{items}</ul>"


def _entries(rows: list[dict], statuses: list[dict]) -> list[tuple[str, dict]]:
    """(slide id, status) per store in run order, then rows that have no status (a report rebuilt from rows)."""
    entries = [(str(s["slide_id"]), s) for s in statuses]
    listed = {sid for sid, _ in entries}
    return entries + [(str(r["slide_id"]), {}) for r in rows if str(r["slide_id"]) not in listed]


def render_report(run_info: dict, rows: list[dict], statuses: list[dict], taxonomy: Taxonomy,
                  truth: dict[str, dict[str, float]] | None = None,
                  drawn: Callable[[str], bytes | None] = lambda slide_id: None) -> str:
    """The report's HTML text (see :func:`write_report`); ``drawn(slide_id)``: the slide's histogram
    SVG bytes if it was drawn already (else it is drawn here)."""
    by_row = {str(r["slide_id"]): r for r in rows}
    entries = _entries(rows, statuses)
    ran = {}  # slide id -> the status of the store whose row it is (not a failed namesake)
    for sid, status in entries:
        if status.get("status") != "failed":
            ran.setdefault(sid, status)
    index = len(by_row) > INLINE_SLIDES
    if index:
        sections = [f"<p class='note'>{len(by_row)} slides: each slide's histogram is linked from the table "
                    f"(&lt;slide&gt;/{HISTOGRAM_NAME} beside this page); the counts and intervals of every slide are "
                    f"in differential.csv.</p>"]
    else:
        sections = [_slide_section(i, sid, row, ran.get(sid, {}), taxonomy, truth, drawn(sid))
                    for i, (sid, row) in enumerate(by_row.items())]
    title = f"bmengine report {DASH} {(run_info.get('model') or {}).get('name', '')}"
    body = (_header(run_info, taxonomy, statuses) + _summary(entries, by_row, taxonomy, index)
            + _failures(statuses) + "".join(sections))
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def write_report(out_dir: Path, run_info: dict, rows: list[dict], statuses: list[dict], taxonomy: Taxonomy,
                 truth: dict[str, dict[str, float]] | None = None) -> Path:
    """Write ``out_dir/report.html`` atomically: run header, slide summary, failures, one section per slide.

    ``truth[slide_id][class]`` is a known differential in percent (excluded classes per 100 base
    cells, as the engine reports them); without it, labels in the rows (``true_pct_``) are used.
    Written as UTF-8 bytes whatever the locale (the text has en dashes and umlauts).
    """
    path = Path(out_dir) / REPORT_NAME

    def drawn(slide_id: str) -> bytes | None:
        drawn_file = Path(out_dir) / slide_id / HISTOGRAM_NAME
        return drawn_file.read_bytes() if drawn_file.is_file() else None

    atomic_write_bytes(path, render_report(run_info, rows, statuses, taxonomy, truth, drawn).encode("utf-8"))
    return path
