"""Per-slide differential counts: a cells table in, one flat row of counts, percentages and intervals out.

A cell is *counted* when it has a prediction, no error and no QC flag (ICSH 2008: count only cells
that can be identified). Percentages are taken over the taxonomy's *base* (every counted cell whose
predicted class is not in ``taxonomy.excluded``); excluded classes are reported per 100 base cells,
as nucleated red cells are per 100 leukocytes (CLSI H20-A2). Every percentage carries an exact
Clopper-Pearson interval (see :mod:`bmengine.engine.outputs.stats`). See docs/differential.md.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bmengine.engine import __version__
from bmengine.engine.outputs.stats import clopper_pearson, per_base_interval
from bmengine.engine.taxonomy import DerivedFigure, Taxonomy

CSV_NAME = "differential.csv"
PARQUET_NAME = "differential.parquet"
METADATA_KEY = b"bmengine"
CLASS_METRICS = ("count", "pct", "ci_low", "ci_high", "soft", "soft_pct")


def _is_blank(values: pd.Series) -> np.ndarray:
    """None, NaN and "" all mean "absent" (a parquet round trip turns None into NaN)."""
    return (values.isna() | (values.astype(str) == "")).to_numpy()


def cell_masks(cells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split crops into (errors, flagged, counted); every crop is in exactly one of them.

    A crop without a prediction is an error even if its ``error`` is empty: it cannot be counted.
    """
    n = len(cells)
    error = ~_is_blank(cells["error"]) if "error" in cells else np.zeros(n, bool)
    error |= _is_blank(cells["predicted"]) if "predicted" in cells else np.ones(n, bool)
    flags = cells["qc_flags"] if "qc_flags" in cells else pd.Series([""] * n, index=cells.index)
    flagged = ~error & ~_is_blank(flags)
    return error, flagged, ~error & ~flagged


def _class_counts(values: Iterable[str], classes: tuple[str, ...]) -> dict[str, int]:
    found = Counter(values)
    return {c: int(found.get(c, 0)) for c in classes}


def _pct(k: float, n: float) -> float:
    return 100.0 * k / n if n else math.nan


def _pct_interval(k: int, n_base: int, excluded: bool, confidence: float) -> tuple[float, float]:
    """Percent-unit interval: a proportion of the base, or "per 100 base cells" for excluded classes."""
    low, high = per_base_interval(k, n_base, confidence) if excluded else clopper_pearson(k, n_base, confidence)
    return 100.0 * float(low), 100.0 * float(high)


def _class_columns(counts: dict[str, int], soft: dict[str, float], taxonomy: Taxonomy, confidence: float) -> dict:
    n_base = sum(counts[c] for c in taxonomy.counted)
    soft_base = sum(soft[c] for c in taxonomy.counted)
    cols: dict[str, float | int] = {}
    intervals = {c: _pct_interval(counts[c], n_base, c in taxonomy.excluded, confidence) for c in taxonomy.classes}
    for c in taxonomy.classes:
        cols[f"count_{c}"] = counts[c]
    for c in taxonomy.classes:
        cols[f"pct_{c}"] = _pct(counts[c], n_base)
    for c in taxonomy.classes:
        cols[f"ci_low_{c}"] = intervals[c][0]
    for c in taxonomy.classes:
        cols[f"ci_high_{c}"] = intervals[c][1]
    cols["soft_n_base"] = float(soft_base)
    for c in taxonomy.classes:
        cols[f"soft_{c}"] = float(soft[c])
    for c in taxonomy.classes:
        cols[f"soft_pct_{c}"] = _pct(soft[c], soft_base)
    return cols


def figure_denominator(figure: DerivedFigure, taxonomy: Taxonomy) -> tuple[str, ...]:
    """An empty denominator means the differential base."""
    return figure.denominator or taxonomy.counted


def figure_interval_kind(figure: DerivedFigure, taxonomy: Taxonomy) -> str | None:
    """'proportion' (numerator inside denominator), 'per_base' (disjoint) or None (no exact interval)."""
    if figure.kind != "percent":
        return None
    num, den = set(figure.numerator), set(figure_denominator(figure, taxonomy))
    if num <= den:
        return "proportion"
    return "per_base" if not num & den else None


def derived_columns(counts: dict[str, float], taxonomy: Taxonomy, confidence: float, prefix: str = "",
                    with_ci: bool = True) -> dict[str, float]:
    """Each derived figure's value (and, for percent figures with an exact interval, its CI)."""
    cols: dict[str, float] = {}
    for figure in taxonomy.derived:
        k = sum(counts[c] for c in figure.numerator)
        n = sum(counts[c] for c in figure_denominator(figure, taxonomy))
        value = (k / n if n else math.nan) if figure.kind == "ratio" else _pct(k, n)
        cols[f"{prefix}{figure.name}"] = float(value)
        interval = figure_interval_kind(figure, taxonomy)
        if with_ci and interval is not None:
            low, high = _pct_interval(int(k), int(n), interval == "per_base", confidence)
            cols[f"{prefix}{figure.name}_ci_low"], cols[f"{prefix}{figure.name}_ci_high"] = low, high
    return cols


def _soft_counts(counted: pd.DataFrame, classes: tuple[str, ...]) -> dict[str, float]:
    """The "soft histogram": probabilities summed over counted cells (NaN if a column is missing)."""
    return {c: float(counted[f"prob_{c}"].astype(float).sum()) if f"prob_{c}" in counted else math.nan
            for c in classes}


def _flag_summary(cells: pd.DataFrame, flagged: np.ndarray) -> str:
    """'blurry:3;dark:1': why cells were left out, without one column per (open-ended) flag name."""
    if not flagged.any():
        return ""
    names = Counter(f for value in cells.loc[flagged, "qc_flags"].astype(str) for f in value.split(";") if f)
    return ";".join(f"{name}:{n}" for name, n in sorted(names.items()))


def _truth_columns(counted: pd.DataFrame, taxonomy: Taxonomy, confidence: float) -> dict:
    """Known-truth columns from the labels of counted cells, and how often the model agreed."""
    labelled = counted[~_is_blank(counted["label"])]
    counts = _class_counts(labelled["label"].astype(str), taxonomy.classes)
    n_base = sum(counts[c] for c in taxonomy.counted)
    cols: dict = {"n_labelled": int(len(labelled)), "true_n_base": int(n_base)}
    agree = (labelled["label"].astype(str) == labelled["predicted"].astype(str)).sum()
    cols["agreement"] = float(agree / len(labelled)) if len(labelled) else math.nan
    cols.update({f"true_count_{c}": counts[c] for c in taxonomy.classes})
    cols.update({f"true_pct_{c}": _pct(counts[c], n_base) for c in taxonomy.classes})
    cols.update(derived_columns(counts, taxonomy, confidence, prefix="true_", with_ci=False))
    return cols


def _check_predictions(counted: pd.DataFrame, taxonomy: Taxonomy) -> None:
    """A prediction outside the taxonomy means model and taxonomy disagree: never drop it silently."""
    unknown = set(counted["predicted"].astype(str)) - set(taxonomy.classes)
    if unknown:
        raise ValueError(f"predicted classes not in taxonomy {taxonomy.name!r}: {sorted(unknown)}")


UNKNOWN_FLAG = "unknown"  # the model's out-of-distribution flag (its card's `ood` threshold)


def _unknown_columns(cells: pd.DataFrame, error: np.ndarray) -> dict:
    """Crops the model itself says are unlike its training data, among those it classified."""
    flags = cells["qc_flags"] if "qc_flags" in cells else pd.Series([""] * len(cells), index=cells.index)
    named = [isinstance(value, str) and UNKNOWN_FLAG in value.split(";") for value in flags]
    unknown = (~error) & np.asarray(named, dtype=bool)
    classified = int((~error).sum())
    return {"n_unknown": int(unknown.sum()), "pct_unknown": _pct(int(unknown.sum()), classified)}


def _adjusted_columns(counts: dict[str, int], taxonomy: Taxonomy, confusion, confidence: float) -> dict:
    """Misclassification-adjusted percentages and intervals (engine/outputs/adjusted.py); NaN
    without a confusion matrix in the model card or without counted cells."""
    from bmengine.engine.outputs.adjusted import adjusted_proportions

    classes = taxonomy.classes
    if confusion is None or not sum(counts.values()):
        estimate = low = high = np.full(len(classes), np.nan)
    else:
        base = np.array([c in taxonomy.counted for c in classes])
        estimate, low, high = adjusted_proportions(np.array([counts[c] for c in classes]), np.asarray(confusion),
                                                   confidence, base=base)
    cols: dict[str, float] = {}
    for name, values in (("adj_pct", estimate), ("adj_ci_low", low), ("adj_ci_high", high)):
        for c, v in zip(classes, values):
            cols[f"{name}_{c}"] = float(100.0 * v)
    return cols


def summarize_slide(slide_id: str, cells: pd.DataFrame, taxonomy: Taxonomy, *, patient_id: str | None = None,
                    confidence: float = 0.95, confusion=None) -> dict:
    """One flat, JSON-safe row (plain int/float/str) with the slide's differential; see the module doc.

    ``confusion``: the model's validation confusion matrix (rows true, columns predicted, in the
    taxonomy's class order) for the misclassification-adjusted columns ``adj_*``.
    """
    error, flagged, counted_mask = cell_masks(cells)
    counted = cells[counted_mask]
    _check_predictions(counted, taxonomy)
    counts = _class_counts(counted["predicted"].astype(str), taxonomy.classes)
    row: dict = {
        "slide_id": str(slide_id),
        "patient_id": None if patient_id is None else str(patient_id),
        "taxonomy": taxonomy.name,
        "ci_level": float(confidence),
        "n_crops": int(len(cells)),
        "n_errors": int(error.sum()),
        "n_flagged": int(flagged.sum()),
        "n_cells": int(counted_mask.sum()),
        "n_base": int(sum(counts[c] for c in taxonomy.counted)),
        **_unknown_columns(cells, error),
    }
    row.update(_class_columns(counts, _soft_counts(counted, taxonomy.classes), taxonomy, confidence))
    row.update(_adjusted_columns(counts, taxonomy, confusion, confidence))
    row.update(derived_columns(counts, taxonomy, confidence))
    row["qc_flag_counts"] = _flag_summary(cells, flagged)
    if "label" in cells and not _is_blank(cells["label"]).all():
        row.update(_truth_columns(counted, taxonomy, confidence))
    return row


def _merged_columns(rows: list[dict]) -> list[str]:
    """Union of the rows' keys, each new key placed right after its predecessor in the row that has it.

    Rows of one taxonomy share a key order, so the result does not depend on which row comes first
    (e.g. whether the first slide had labels).
    """
    columns: list[str] = []
    for row in rows:
        position = 0
        for key in row:
            if key in columns:
                position = columns.index(key) + 1
            else:
                columns.insert(position, key)
                position += 1
    return columns


def differential_table(rows: list[dict]) -> pd.DataFrame:
    """All slides' rows as one table with a stable column order."""
    return pd.DataFrame.from_records(rows, columns=_merged_columns(rows))


def _with_provenance(table: pd.DataFrame, metadata: dict) -> pd.DataFrame:
    """Every row says which model and engine produced it (CSV has nowhere else to say it)."""
    table = table.copy()
    defaults = {"model_sha256": metadata.get("model_sha256"),
                "bmengine_version": metadata.get("bmengine_version", __version__)}
    for column, value in defaults.items():
        if column not in table:
            table[column] = value
        else:
            table[column] = table[column].astype(object).where(table[column].notna(), value)
    return table


def _write_parquet(table: pd.DataFrame, metadata: dict, path: Path) -> None:
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    schema_metadata = {**(arrow.schema.metadata or {}), METADATA_KEY: json.dumps(metadata, default=str).encode()}
    pq.write_table(arrow.replace_schema_metadata(schema_metadata), path)


def _keep_previous(target: Path) -> Path | None:
    """A ``.previous`` hard link to ``target`` (a copy where links are not supported), or None."""
    if not target.exists():
        return None
    backup = target.with_name(target.name + ".previous")
    backup.unlink(missing_ok=True)
    try:
        os.link(target, backup)
    except OSError:
        shutil.copy2(target, backup)
    return backup


def _replace_together(moves: list[tuple[Path, Path]]) -> None:
    """Rename each ``(partial, target)`` pair, all or none: when a rename fails, the targets already
    replaced get their previous content back (or are removed where there was none)."""
    done: list[tuple[Path, Path | None]] = []
    try:
        for partial, target in moves:
            done.append((target, _keep_previous(target)))
            os.replace(partial, target)
    except BaseException:
        for target, backup in reversed(done):
            if backup is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(backup, target)
        raise
    finally:
        for _, backup in done:
            if backup is not None:
                backup.unlink(missing_ok=True)


def write_differential(rows: list[dict], out_dir: Path, metadata: dict | None = None) -> tuple[Path, Path]:
    """Write ``differential.csv`` and ``differential.parquet``, the same table in both.

    The two files stay a pair: when this returns both hold the new table; when it raises, both hold
    what they held before (or neither exists, as before). Both are first written in full to
    ``.partial`` files, so a failure while writing (disk full, a value pyarrow refuses) replaces
    nothing; then two renames, and if the second fails the first is undone. Only a hard kill
    between the two renames can leave them from different runs; every row names the model sha256
    and bmengine version that produced it, and re-running `bmengine run` (it resumes) rewrites both.

    ``metadata`` (model sha256, bmengine version...) goes into the parquet schema metadata under
    ``b"bmengine"`` as JSON, and its sha256/version become columns of every row.
    """
    metadata = dict(metadata or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = _with_provenance(differential_table(rows), metadata)
    csv_path, parquet_path = out_dir / CSV_NAME, out_dir / PARQUET_NAME
    csv_partial, parquet_partial = (p.with_name(p.name + ".partial") for p in (csv_path, parquet_path))
    try:
        table.to_csv(csv_partial, index=False)
        _write_parquet(table, metadata, parquet_partial)
        _replace_together([(csv_partial, csv_path), (parquet_partial, parquet_path)])
    finally:
        csv_partial.unlink(missing_ok=True)
        parquet_partial.unlink(missing_ok=True)
    return csv_path, parquet_path


def read_metadata(parquet_path: Path) -> dict:
    """The ``metadata`` a differential.parquet was written with."""
    raw = (pq.read_schema(parquet_path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}
