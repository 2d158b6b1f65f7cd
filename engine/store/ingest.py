"""Build slide stores from a folder of slide sub-folders or from a CSV manifest.

Planning (which file goes to which slide) is separate from writing, so a manifest that is missing
columns fails before anything is written, and the CLI knows the total number of files up front.
A bad file or row never stops the other slides: it is recorded as a problem and skipped. A file
whose magic bytes say JPEG/PNG/TIFF is stored even if it is corrupt inside: the engine then
records that cell as an error row, so no cell is ever silently dropped.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

from bmengine.engine.store.limits import InputLimits, read_regular_file
from bmengine.engine.store.slide_store import (
    FORMAT_CODES,
    SlideStoreWriter,
    is_safe_id,
    sniff_format,
)

REQUIRED_COLUMNS = ("path", "slide_id")
OPTIONAL_COLUMNS = ("label", "patient_id")
MAX_PROBLEMS_IN_PROVENANCE = 100


class IngestError(ValueError):
    """The input as a whole is unusable (missing folder, manifest without its columns)."""


@dataclass(frozen=True)
class CropItem:
    path: Path  # where to read it
    source: str  # what the store records (relative to the folder, or as the manifest wrote it)
    label: str | None = None


@dataclass
class SlidePlan:
    slide_id: str
    items: list[CropItem] = field(default_factory=list)
    patient_id: str | None = None
    problems: list[tuple[str, str]] = field(default_factory=list)  # found while planning


@dataclass
class IngestPlan:
    slides: list[SlidePlan]
    problems: list[tuple[str, str]]  # (file or row, reason) not tied to one slide
    provenance: dict
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (where, what): stored anyway

    @property
    def n_files(self) -> int:
        return sum(len(s.items) for s in self.slides)


@dataclass
class IngestReport:
    slides: list[tuple[str, Path, int]] = field(default_factory=list)  # written: (slide_id, store, n_cells)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (file or row, reason): skipped
    existing: list[tuple[str, Path]] = field(default_factory=list)  # store already there, left alone
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (where, what): stored anyway

    @property
    def n_cells(self) -> int:
        return sum(n for _, _, n in self.slides)


class IngestProgress:
    """What ingest tells its caller as it goes; the CLI draws a bar from it."""

    def planned(self, n_slides: int, n_files: int) -> None: ...
    def slide_started(self, slide_id: str, n_files: int) -> None: ...
    def files_done(self, n: int) -> None: ...
    def slide_finished(self, slide_id: str, n_cells: int, status: str) -> None: ...


def read_crop(path: Path, limits: InputLimits = InputLimits()) -> tuple[bytes | None, str | None]:
    """The file's bytes, or why it cannot be a crop: regular files only, within the size cap,
    an image by its magic bytes (not its extension), and a header within the pixel cap."""
    data, reason = read_regular_file(Path(path), limits)
    if reason is not None:
        return None, reason
    if not data:
        return None, "empty file (0 bytes)"
    if sniff_format(data) == FORMAT_CODES["unknown"]:
        return None, f"not a JPEG, PNG or TIFF image (starts with {data[:8].hex(' ')})"
    if (reason := limits.check_pixels(data)) is not None:
        return None, reason
    return data, None


# -- planning --------------------------------------------------------------------------------

def _walk_files(folder: Path, problems: list[tuple[str, str]]) -> list[Path]:
    """Every non-hidden file under ``folder``, sorted by relative path; linked folders are reported."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for d in list(dirnames):
            if d.startswith(".") or (here / d).is_symlink():
                dirnames.remove(d)
                if not d.startswith("."):
                    problems.append((str(here / d), "link to a folder, not followed"))
        found += [here / f for f in filenames if not f.startswith(".")]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def plan_folder(root: Path, exclude: Path | None = None) -> IngestPlan:
    """One slide per sub-folder of ``root`` (its name is the slide id); crops found recursively.

    Hidden files and folders (``.DS_Store``, ``.git``) are ignored; files directly in ``root``
    are reported, as they belong to no slide. ``exclude`` (the output folder) is left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"crop folder {root} does not exist or is not a folder")
    skip = exclude.resolve() if exclude is not None else None
    slides, problems = [], []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or (skip is not None and entry.resolve() == skip):
            continue
        if not entry.is_dir():
            problems.append((str(entry), "not inside a slide sub-folder; skipped"))
            continue
        if not is_safe_id(entry.name):
            problems.append((str(entry), f"folder name {entry.name!r} is not a safe slide id "
                                         "(letters, digits, '.', '_', '-'); slide skipped"))
            continue
        plan = SlidePlan(entry.name)
        files = _walk_files(entry, plan.problems)
        plan.items = [CropItem(f, f.relative_to(root).as_posix()) for f in files]
        slides.append(plan)
    if not slides and not problems:
        raise IngestError(f"{root} has no slide sub-folders (expected {root}/<slide_id>/<crops>)")
    return _checked(IngestPlan(slides, problems, {"ingested_from": "folder", "source": str(root.resolve())}))


def _read_manifest_rows(csv_path: Path) -> tuple[list[str], list[tuple[int, dict]]]:
    if Path(csv_path).exists() and not Path(csv_path).is_file():  # a FIFO would block the open forever
        raise IngestError(f"manifest {csv_path} is not a regular file")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            rows = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise IngestError(f"manifest {csv_path} not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise IngestError(f"manifest {csv_path} cannot be read as a UTF-8 CSV: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise IngestError(f"manifest {csv_path} lacks required column(s) {', '.join(missing)} "
                          f"(has: {', '.join(columns) or 'no header'}; needs path,slide_id[,label][,patient_id])")
    return columns, rows


def _clean(value: str | None) -> str | None:
    value = (value or "").strip()
    return value or None


def plan_manifest(csv_path: Path) -> IngestPlan:
    """Slides in order of first appearance, crops in row order; relative paths start at the CSV's folder."""
    csv_path = Path(csv_path)
    _, rows = _read_manifest_rows(csv_path)
    base = csv_path.resolve().parent
    slides: dict[str, SlidePlan] = {}
    problems: list[tuple[str, str]] = []
    for line, row in rows:
        where = f"{csv_path}:{line}"
        if None in row or any(v is None for v in row.values()):
            problems.append((where, "row has a different number of fields than the header"))
            continue
        path, slide_id = _clean(row["path"]), _clean(row["slide_id"])
        if path is None:
            problems.append((where, "empty path"))
            continue
        if slide_id is None or not is_safe_id(slide_id):
            problems.append((where, f"slide_id {slide_id!r} is not a safe name (letters, digits, '.', '_', '-')"))
            continue
        plan = slides.setdefault(slide_id, SlidePlan(slide_id))
        patient = _clean(row.get("patient_id"))
        if patient is not None and plan.patient_id not in (None, patient):
            problems.append((where, f"patient_id {patient!r} conflicts with {plan.patient_id!r} "
                                    f"given earlier for slide {slide_id}"))
            continue
        plan.patient_id = plan.patient_id or patient
        plan.items.append(CropItem(base / path, path, _clean(row.get("label"))))
    if not slides and not problems:
        raise IngestError(f"manifest {csv_path} has no rows")
    return _checked(IngestPlan(list(slides.values()), problems,
                               {"ingested_from": "manifest", "manifest": str(csv_path.resolve())}))


def _drop_duplicate_files(plan: SlidePlan, warnings: list[tuple[str, str]]) -> None:
    """A file listed twice for one slide (or reached twice through a link) is one cell: keep the first."""
    first: dict[str, CropItem] = {}
    kept = []
    for item in plan.items:
        try:
            key = str(item.path.resolve())
        except OSError:  # a link loop: read_crop reports it
            key = str(item.path)
        if key in first:
            warnings.append((item.source, f"same file as {first[key].source!r} in slide {plan.slide_id}; stored once"))
            continue
        first[key] = item
        kept.append(item)
    plan.items = kept


def _warn_case_collisions(slides: list[SlidePlan], warnings: list[tuple[str, str]]) -> None:
    """Ids that differ only in case name the same store on a case-insensitive disk (macOS, Windows)."""
    seen: dict[str, str] = {}
    for plan in slides:
        other = seen.setdefault(plan.slide_id.casefold(), plan.slide_id)
        if other != plan.slide_id:
            warnings.append((plan.slide_id, f"slide ids {other!r} and {plan.slide_id!r} differ only in case: "
                                            "on a case-insensitive disk their stores would collide; rename one"))


def _checked(plan: IngestPlan) -> IngestPlan:
    for slide in plan.slides:
        _drop_duplicate_files(slide, plan.warnings)
    _warn_case_collisions(plan.slides, plan.warnings)
    return plan


# -- writing ---------------------------------------------------------------------------------

def _write_slide(plan: SlidePlan, target: Path, provenance: dict, progress: IngestProgress,
                 limits: InputLimits) -> tuple[int, list]:
    """Write one store; returns (n_cells, problems). Nothing is written when no crop is usable."""
    problems = list(plan.problems)
    n = 0
    with SlideStoreWriter(target, plan.slide_id, patient_id=plan.patient_id) as writer:
        for item in plan.items:
            data, reason = read_crop(item.path, limits)
            if reason is None:
                writer.add(data, item.source, item.label)
                n += 1
            else:
                problems.append((str(item.path), reason))
            progress.files_done(1)
        if n == 0:
            writer.abort()
            return 0, problems + [(plan.slide_id, "no usable crops; no store written")]
        writer.provenance = {  # the store says which of its slide's files are missing, and why
            **provenance,
            "n_files_skipped": len(problems),
            "skipped_files": [{"file": f, "reason": r} for f, r in problems[:MAX_PROBLEMS_IN_PROVENANCE]],
        }
    return n, problems


def ingest(plan: IngestPlan, out: Path, *, overwrite: bool = False,
           progress: IngestProgress | None = None, limits: InputLimits = InputLimits()) -> IngestReport:
    """Write ``<out>/<slide_id>.zarr`` for every planned slide; existing stores are kept unless ``overwrite``."""
    progress = progress or IngestProgress()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = IngestReport(problems=list(plan.problems), warnings=list(plan.warnings))
    progress.planned(len(plan.slides), plan.n_files)
    for slide in plan.slides:
        target = out / f"{slide.slide_id}.zarr"
        progress.slide_started(slide.slide_id, len(slide.items))
        if target.exists() and not overwrite:
            report.existing.append((slide.slide_id, target))
            progress.files_done(len(slide.items))
            progress.slide_finished(slide.slide_id, 0, "exists")
            continue
        try:
            n, problems = _write_slide(slide, target, plan.provenance, progress, limits)
        except Exception as exc:  # e.g. disk full: this slide fails, the others go on
            report.problems.append((slide.slide_id, f"store not written: {type(exc).__name__}: {exc}"))
            progress.slide_finished(slide.slide_id, 0, "failed")
            continue
        report.problems += problems
        if n:
            report.slides.append((slide.slide_id, target, n))
        progress.slide_finished(slide.slide_id, n, "written" if n else "failed")
    return report


def ingest_folder(root: Path, out: Path, *, overwrite: bool = False,
                  progress: IngestProgress | None = None, limits: InputLimits = InputLimits()) -> IngestReport:
    return ingest(plan_folder(root, exclude=out), out, overwrite=overwrite, progress=progress, limits=limits)


def ingest_manifest(csv_path: Path, out: Path, *, overwrite: bool = False,
                    progress: IngestProgress | None = None, limits: InputLimits = InputLimits()) -> IngestReport:
    return ingest(plan_manifest(csv_path), out, overwrite=overwrite, progress=progress, limits=limits)
