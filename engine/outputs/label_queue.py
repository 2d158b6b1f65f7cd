"""``bmengine label-queue``: the crops a lab should label, drawn from a finished run, pre-sorted.

A slide with a domain warning means the model does not know this lab's look; the cure that works
is a fine-tune on a few hundred of the lab's own labelled crops (README, "Can I trust the counts").
This writes those crops out of the slide stores, the original bytes, into one folder per model
class, each crop in the folder of the class the model gave it. A technician moves every wrongly
sorted crop into its right folder and deletes what is not a cell; the folder is then the class-per-
folder dataset ``bmengine finetune`` reads. ``label_queue.csv`` keeps where every crop came from.

Only crops that decoded and passed the QC are drawn (an ``unknown`` flag is kept: those are the
crops the model least recognises). Each predicted class gets up to ``per_class`` crops, drawn at
random across the chosen slides. Predictions come from the run's ``cells.parquet``; a store whose
content changed since that run is left out, since its crops would no longer match.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bmengine.engine.pipeline.resume import MARKER
from bmengine.engine.store import FORMAT_CODES, SlideStore, SlideStoreError

EXTENSIONS = {FORMAT_CODES["jpeg"]: ".jpg", FORMAT_CODES["png"]: ".png", FORMAT_CODES["tiff"]: ".tif"}
USABLE_FLAGS = ("", "unknown")  # QC-flagged crops (garbled, blank, ...) are not cells to label
MANIFEST = "label_queue.csv"
MANIFEST_COLUMNS = ("file", "slide_id", "cell_index", "source", "predicted", "confidence", "qc_flags", "ood_score",
                    "domain_warning")

INSTRUCTIONS = """\
Crops to label for `bmengine finetune`, written by `bmengine label-queue` from the run in
{run}
(model sha256 {model}).

Each crop sits in the folder of the class the model gave it. For every crop:
- if the class is right, leave it;
- if it is wrong, move it into the folder of its true class;
- if it is not one of these classes or not a cell, delete it.
label_queue.csv says which slide and cell each file came from; it is not read by finetune.

Then: bmengine finetune MODEL.onnx {folder} --out RUN_DIR
(half of the crops, stratified, are held out to score the fine-tuned model).
"""


class LabelQueueError(ValueError):
    """Nothing can be drawn, or the target folder must not be touched; nothing was written."""


@dataclass(frozen=True)
class LabelQueueConfig:
    slides: Path  # the slide stores the run read
    run_out: Path  # the run's OUT folder
    out: Path  # the folder to create (must not exist or be empty)
    per_class: int = 20
    all_slides: bool = False  # default: only the slides with a domain warning
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_class < 1:
            raise LabelQueueError(f"--per-class must be at least 1, not {self.per_class}")


@dataclass
class LabelQueue:
    folder: Path
    classes: tuple[str, ...]
    per_class: dict[str, int]
    slides: list[str]
    skipped: list[str] = field(default_factory=list)  # slides left out, each with the reason

    @property
    def n_crops(self) -> int:
        return sum(self.per_class.values())


@dataclass(frozen=True)
class _Slide:
    slide_id: str
    store: SlideStore
    cells_path: Path
    domain_warning: str


def _finished_slides(cfg: LabelQueueConfig) -> tuple[list[_Slide], list[str], str]:
    """The run's finished slides whose stores still hold what was classified, and the ones left out."""
    markers = sorted(Path(cfg.run_out).glob(f"*/{MARKER}"))
    if not markers:
        raise LabelQueueError(f"{cfg.run_out}: no finished slide (no */{MARKER}); run `bmengine run` first")
    chosen, skipped, models = [], [], set()
    for marker in markers:
        try:
            record = json.loads(marker.read_text(encoding="utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            skipped.append(f"{marker}: unreadable ({exc})")
            continue
        slide_id = str(record.get("slide_id", marker.parent.name))
        if record.get("status") != "ok":
            skipped.append(f"{slide_id}: not finished (status {record.get('status')!r})")
            continue
        if not (marker.parent / "cells.parquet").is_file():
            skipped.append(f"{slide_id}: its cells.parquet is missing")
            continue
        warning = str(record.get("domain_warning") or "")
        if not warning and not cfg.all_slides:
            continue  # the default: only the slides whose counts the run said do not hold
        store_path = Path(cfg.slides) / Path(str(record.get("store", ""))).name
        try:
            store = SlideStore.open(store_path)
        except SlideStoreError as exc:
            skipped.append(f"{slide_id}: its store cannot be opened ({exc})")
            continue
        expected = (record.get("resume") or {}).get("store_hash")
        if expected != store.content_hash():
            skipped.append(f"{slide_id}: {store_path} changed since the run classified it; run `bmengine run` again")
            continue
        models.add(str(record.get("model_sha256")))
        chosen.append(_Slide(slide_id, store, marker.parent / "cells.parquet", warning))
    if len(models) > 1:
        raise LabelQueueError(f"{cfg.run_out}: its slides were classified by {len(models)} different models; "
                              "draw from one model's run at a time")
    if not chosen:
        why = "" if cfg.all_slides else " with a domain warning (pass --all-slides to draw from every slide)"
        listing = "".join(f"\n  {line}" for line in skipped)
        raise LabelQueueError(f"{cfg.run_out}: no finished slide{why}{listing}")
    return chosen, skipped, models.pop()


ROW_COLUMNS = ["cell_index", "source", "predicted", "confidence", "error", "qc_flags", "ood_score"]


def _model_classes(cells_path: Path) -> tuple[str, ...]:
    names = pq.read_schema(cells_path).names
    return tuple(c.removeprefix("prob_") for c in names if c.startswith("prob_"))


def _usable(cells_path: Path, columns: list[str]):
    """The slide's crops that decoded and passed the QC (``unknown`` kept): a pandas frame."""
    table = pq.read_table(cells_path, columns=columns).to_pandas()
    return table[table["error"].isna() & table["qc_flags"].fillna("").isin(USABLE_FLAGS)]


def _draw(slides: list[_Slide], per_class: int, seed: int) -> tuple[list[tuple[_Slide, dict]], tuple[str, ...]]:
    """Up to ``per_class`` usable crops per predicted class, uniformly at random over all chosen slides.

    Two passes keep memory to a count per slide and class, whatever the archive's size: the first
    counts each slide's usable crops per class, a multivariate hypergeometric draw says how many
    each slide gives, the second reads just those rows."""
    classes: tuple[str, ...] = ()
    counts = []
    for slide in slides:
        try:
            classes = classes or _model_classes(slide.cells_path)  # one model made every table (checked)
            predicted = _usable(slide.cells_path, ["predicted", "error", "qc_flags"])["predicted"]
        except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors derive from these
            raise LabelQueueError(f"{slide.cells_path}: cannot be read as a cells table ({exc}); "
                                  f"re-run `bmengine run` for slide {slide.slide_id}") from None
        counts.append([int((predicted == name).sum()) for name in classes])
    counts = np.asarray(counts, dtype=np.int64)
    rng = np.random.default_rng(seed)
    share = np.zeros_like(counts)
    for c in range(len(classes)):
        if counts[:, c].sum():
            share[:, c] = rng.multivariate_hypergeometric(counts[:, c], min(per_class, int(counts[:, c].sum())))
    drawn = []
    for i, slide in enumerate(slides):
        if not share[i].any():
            continue
        usable = _usable(slide.cells_path, ROW_COLUMNS)
        for c, name in enumerate(classes):
            rows = usable[usable["predicted"] == name]
            if share[i, c]:
                pick = np.sort(rng.choice(len(rows), size=int(share[i, c]), replace=False))
                drawn.extend((slide, row) for row in rows.iloc[pick].to_dict("records"))
    return drawn, classes


def _crop_bytes(store: SlideStore, index: int) -> tuple[bytes | None, str]:
    crops, errors = store.read_crops_checked(index, index + 1)
    return crops[0], errors[0] or ""


def build_label_queue(cfg: LabelQueueConfig) -> LabelQueue:
    """Write the folder (via a ``.partial`` sibling renamed at the end); returns what it holds."""
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabelQueueError(f"{out} already exists and is not an empty folder (it may hold someone's "
                              "labelling); name a new folder")
    slides, skipped, model = _finished_slides(cfg)
    drawn, classes = _draw(slides, cfg.per_class, cfg.seed)
    if not drawn:
        raise LabelQueueError(f"{cfg.run_out}: the chosen slides hold no crop that decoded and passed the QC")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for name in classes:
        (partial / name).mkdir(parents=True)
    manifest = io.StringIO()
    writer = csv.DictWriter(manifest, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    counts = {name: 0 for name in classes}
    formats = {slide.slide_id: slide.store.formats() for slide in {s.slide_id: s for s, _ in drawn}.values()}
    for slide, row in drawn:
        index = int(row["cell_index"])
        data, problem = _crop_bytes(slide.store, index)
        if data is None or problem:
            skipped.append(f"{slide.slide_id} cell {index}: not copied ({problem or 'unreadable'})")
            continue
        suffix = EXTENSIONS.get(int(formats[slide.slide_id][index]), ".img")
        relative = Path(row["predicted"]) / f"{slide.slide_id}__cell{index:06d}{suffix}"
        (partial / relative).write_bytes(data)
        counts[row["predicted"]] += 1
        ood = row.get("ood_score")
        writer.writerow({"file": relative.as_posix(), "slide_id": slide.slide_id, "cell_index": index,
                         "source": row.get("source", ""), "predicted": row["predicted"],
                         "confidence": f"{float(row['confidence']):.4f}", "qc_flags": row.get("qc_flags") or "",
                         "ood_score": "" if ood is None or ood != ood else f"{float(ood):.3f}",
                         "domain_warning": slide.domain_warning})
    (partial / MANIFEST).write_text(manifest.getvalue(), encoding="utf-8")
    (partial / "README.txt").write_text(INSTRUCTIONS.format(run=Path(cfg.run_out).resolve(), model=model,
                                                            folder=out), encoding="utf-8")
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(partial, out)
    return LabelQueue(out, classes, counts, [s.slide_id for s in slides], skipped)
