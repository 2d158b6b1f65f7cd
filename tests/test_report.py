"""The run report and the histogram plot: self-contained, escaped, readable numbers."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from bmengine.engine.outputs.differential import summarize_slide
from bmengine.engine.outputs.plots import plot_histogram
from bmengine.engine.outputs.report import fmt_ci, fmt_pct, write_report
from bmengine.engine.taxonomy import get_taxonomy

PBC = get_taxonomy("pbc-blood-8")
MATEK = get_taxonomy("matek-bone-marrow-21")


def _cells(taxonomy, counts: dict[str, int], labels: bool, error_rows: int = 0) -> pd.DataFrame:
    """A cells table with the engine's columns and the given predicted counts."""
    predicted = [c for c, k in counts.items() for _ in range(k)] + [None] * error_rows
    n = len(predicted)
    probs = np.full((n, len(taxonomy.classes)), 0.02, dtype=np.float32)
    for i, c in enumerate(predicted):
        if c is None:
            probs[i] = np.nan
        else:
            probs[i, taxonomy.index(c)] = 1 - 0.02 * (len(taxonomy.classes) - 1)
    table = pd.DataFrame({"cell_index": np.arange(n, dtype=np.int64), "source": [f"c{i}.jpg" for i in range(n)],
                          "label": list(predicted) if labels else [None] * n, "predicted": predicted,
                          "confidence": np.nanmax(np.where(np.isnan(probs), -1, probs), axis=1)})
    for i, c in enumerate(taxonomy.classes):
        table[f"prob_{c}"] = probs[:, i]
    table["error"] = [None if c is not None else "DecodeError: bad JPEG" for c in predicted]
    table["qc_flags"] = ""
    return table


PBC_COUNTS = {"neutrophil": 120, "lymphocyte": 60, "monocyte": 12, "eosinophil": 6, "basophil": 2,
              "erythroblast": 16, "platelet": 20}


def _run_info(taxonomy) -> dict:
    return {"model": {"name": "regnetx <tiny>", "sha256": "ab" * 32, "path": "/models/tiny_int8.onnx"},
            "bmengine_version": "0.1.0", "started_at": "2025-01-01T00:00:00+00:00",
            "finished_at": "2025-01-01T00:05:00+00:00", "crops_per_second": 131.4, "taxonomy": taxonomy.name}


@pytest.fixture(scope="module")
def pbc_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    rows = [summarize_slide("<b>x", _cells(PBC, PBC_COUNTS, labels=True, error_rows=3), PBC, patient_id="P&1"),
            summarize_slide("patient-01", _cells(PBC, PBC_COUNTS, labels=False), PBC)]
    statuses = [
        {"slide_id": "<b>x", "status": "ok", "error": None, "seconds": 1.5, "n_crops": 239},
        {"slide_id": "patient-01", "status": "skipped", "error": None, "seconds": 2.0, "n_crops": 236},
        {"slide_id": "broken-slide", "status": "failed", "error": "ValueError: <script>alert(1)</script>",
         "seconds": 0.1, "n_crops": 0},
    ]
    truth = {"patient-01": {"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 3, "basophil": 1,
                            "platelet": 10}}
    path = write_report(out, _run_info(PBC), rows, statuses, PBC, truth=truth)
    return path, path.read_text(encoding="utf-8")


def test_report_is_written_atomically(pbc_report):
    path, _ = pbc_report
    assert path.name == "report.html" and path.is_file()
    assert not list(path.parent.glob("*.partial"))


def test_report_is_self_contained(pbc_report):
    _, text = pbc_report
    assert not re.search(r"https?://", text)
    assert "<script" not in text.lower() and "<link" not in text.lower()
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 2 and all(s.startswith("data:image/svg+xml;base64,") for s in sources)
    for s in sources:
        svg = base64.b64decode(s.split(",", 1)[1]).decode("utf-8")
        assert svg.startswith("<svg ") and "href" not in svg  # nothing the picture would fetch


def test_report_names_every_slide_and_escapes_text(pbc_report):
    _, text = pbc_report
    assert "&lt;b&gt;x" in text and "<b>x" not in text
    assert "patient-01" in text and "broken-slide" in text
    assert "P&amp;1" in text and "regnetx &lt;tiny&gt;" in text
    assert "ValueError: &lt;script&gt;alert(1)&lt;/script&gt;" in text  # in the failed-slides section


def test_report_header_and_numbers(pbc_report):
    _, text = pbc_report
    assert "ab" * 32 in text and "0.1.0" in text and "2025-01-01T00:00:00+00:00" in text and "131.4" in text
    # neutrophil 120/200 = 60.0% with its exact interval, one decimal, en dash
    assert "<td>60.0</td><td>52.9\u201366.8</td>" in text
    assert re.search(r"\d+\.\d\u2013\d+\.\d", text)
    assert "Known % (known mixture)" in text and "Known % (labels)" in text
    assert "<td>2.00</td>" in text  # NLR 120/60, and the known mixture's 60/30
    assert "3 errors" in text and "agreement with labels 100.0%" in text


def test_report_with_only_failures(tmp_path):
    statuses = [{"slide_id": "a", "status": "failed", "error": "OSError: gone", "seconds": 0.0, "n_crops": 0}]
    text = write_report(tmp_path, _run_info(MATEK), [], statuses, MATEK).read_text(encoding="utf-8")
    assert "OSError: gone" in text and "data:image/" not in text


def test_matek_report_shows_derived_figures(tmp_path):
    counts = {"NGS": 60, "MYB": 20, "PMO": 10, "EBO": 30, "PEB": 10, "BLA": 15, "LYT": 30, "ART": 6}
    row = summarize_slide("bm-7", _cells(MATEK, counts, labels=False), MATEK)
    text = write_report(tmp_path, _run_info(MATEK), [row], [], MATEK).read_text(encoding="utf-8")
    assert "myeloid:erythroid ratio" in text and "<td>2.25</td>" in text  # (60+20+10)/(30+10)
    assert f"<td>{100 * 15 / 175:.1f}</td>" in text  # blasts per 100 base cells, 8.6


def _svg(path):
    import xml.etree.ElementTree as ET

    return ET.fromstring(path.read_text(encoding="utf-8"))


def _tagged(root, tag: str, cls: str) -> dict[str, object]:
    ns = "{http://www.w3.org/2000/svg}"
    return {e.get("data-class"): e for e in root.iter(ns + tag) if e.get("class") == cls}


def test_the_histogram_svg_draws_each_class_at_its_percentage_with_its_interval(tmp_path):
    """Bars are as tall as their percentages (one scale for all), error bars span the row's exact
    interval on the same scale, excluded classes are hatched, the counts are printed, and the
    known truth gets one marker per class; the file is well-formed XML written atomically."""
    row = summarize_slide("s", _cells(MATEK, {"BLA": 5, "NGS": 40, "KSC": 3}, labels=True), MATEK)
    path = plot_histogram(row, MATEK, tmp_path / "plots" / "s.svg", title="s <48 cells> & more")
    assert not list(path.parent.glob("*.partial"))
    root = _svg(path)
    bars, intervals = _tagged(root, "rect", "bar"), _tagged(root, "line", "ci")
    assert set(bars) == set(MATEK.classes)
    base = float(bars["NGS"].get("y")) + float(bars["NGS"].get("height"))  # the zero line
    scale = float(bars["NGS"].get("height")) / row["pct_NGS"]
    for c in ("NGS", "BLA"):
        assert float(bars[c].get("height")) == pytest.approx(row[f"pct_{c}"] * scale, abs=0.15)
        low, high = sorted(float(intervals[c].get(k)) for k in ("y1", "y2"))
        assert base - high == pytest.approx(row[f"ci_low_{c}"] * scale, abs=0.15)
        assert base - low == pytest.approx(row[f"ci_high_{c}"] * scale, abs=0.15)
    excluded = [c for c in MATEK.classes if c in MATEK.excluded]
    assert excluded and all(bars[c].get("fill") == "url(#excluded-hatch)" for c in excluded)
    assert all(bars[c].get("fill") != "url(#excluded-hatch)" for c in MATEK.counted)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "40" in texts and "5" in texts and "s <48 cells> & more" in texts  # escaped on disk, exact when read
    assert len([e for e in root.iter("{http://www.w3.org/2000/svg}path") if e.get("class") == "truth"]) == len(
        MATEK.classes)
    empty = summarize_slide("e", _cells(PBC, {}, labels=False, error_rows=4), PBC)
    assert "no cells counted" in [t.text for t in _svg(plot_histogram(empty, PBC, tmp_path / "e.svg", "empty")).iter(
        "{http://www.w3.org/2000/svg}text")]


def test_number_formatting():
    assert fmt_pct(12.345) == "12.3" and fmt_pct(float("nan")) == "\u2014" and fmt_pct(None) == "\u2014"
    assert fmt_ci(12.34, 18.96) == "12.3\u201319.0"
    assert fmt_ci(4.0, float("inf")) == "4.0\u2013\u221e"
    assert fmt_ci(float("nan"), 1.0) == "\u2014"


def test_each_histogram_is_drawn_once_and_the_report_inlines_its_bytes(tmp_path):
    row = summarize_slide("s1", _cells(PBC, PBC_COUNTS, labels=False), PBC)
    drawn = plot_histogram(row, PBC, tmp_path / "s1" / "histogram.svg", title="as the slide writer drew it")
    text = write_report(tmp_path, _run_info(PBC), [row], [{"slide_id": "s1", "status": "ok"}], PBC).read_text()
    (source,) = re.findall(r'src="data:image/svg\+xml;base64,([^"]*)"', text)
    assert base64.b64decode(source) == drawn.read_bytes()


def test_an_archive_above_the_inline_limit_gets_an_index_that_links_each_histogram(tmp_path, monkeypatch):
    import bmengine.engine.outputs.report as report

    monkeypatch.setattr(report, "INLINE_SLIDES", 3)
    rows = [summarize_slide(f"s{i}", _cells(PBC, PBC_COUNTS, labels=False), PBC) for i in range(4)]
    statuses = [{"slide_id": f"s{i}", "status": "ok"} for i in range(4)]
    text = write_report(tmp_path, _run_info(PBC), rows, statuses, PBC).read_text()
    assert "data:image" not in text and "<section" not in text
    assert all(f'href="s{i}/histogram.svg"' in text for i in range(4))
    small = write_report(tmp_path, _run_info(PBC), rows[:3], statuses[:3], PBC).read_text()
    assert small.count("data:image/svg+xml;base64,") == 3
