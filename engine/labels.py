"""Label maps: a lab's own label names -> the model's class names.

Labs name their folders and manifest labels their own way (Matek's ``NGS``, a LIS export's
``Neutrophil, segmented``). A label map is a two-column CSV, ``source,model_class``; a source mapped
to an empty class (or ``-``) is left out of scoring. ``bmengine eval`` and ``bmengine run`` take it as
``--label-map``; labels that are neither model classes nor mapped are named, never silently dropped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

IGNORE = ""  # model_class value meaning "not a class of this model: leave these crops unscored"


class LabelMapError(ValueError):
    """A label map that cannot be used with this model."""


@dataclass(frozen=True)
class LabelMap:
    mapping: dict[str, str] = field(default_factory=dict)  # source label -> model class ("" = ignore)
    source: str = "<identity>"

    @classmethod
    def load(cls, path: Path, classes: Iterable[str]) -> "LabelMap":
        """Read ``source,model_class`` rows; every target must be one of the model's ``classes``."""
        path, classes = Path(path), set(classes)
        if not path.is_file():
            raise LabelMapError(f"label map {path}: not found (or not a regular file)")
        try:
            with open(path, newline="", encoding="utf-8-sig") as handle:
                rows = list(csv.DictReader(handle))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise LabelMapError(f"label map {path}: cannot be read as a UTF-8 CSV: {exc}") from None
        if not rows or not {"source", "model_class"} <= set(rows[0]):
            raise LabelMapError(f"label map {path}: needs the columns source,model_class")
        mapping: dict[str, str] = {}
        for line, row in enumerate(rows, start=2):
            source = (row["source"] or "").strip()
            target = (row["model_class"] or "").strip()
            target = IGNORE if target == "-" else target
            if not source:
                raise LabelMapError(f"label map {path}:{line}: empty source label")
            if target and target not in classes:
                raise LabelMapError(f"label map {path}:{line}: {target!r} is not a class of this model "
                                    f"({', '.join(sorted(classes))})")
            if mapping.get(source, target) != target:
                raise LabelMapError(f"label map {path}:{line}: {source!r} is mapped twice, to "
                                    f"{mapping[source]!r} and {target!r}")
            mapping[source] = target
        return cls(mapping, str(path))

    def __call__(self, label: str | None) -> str | None:
        """The model class for ``label``: mapped, or unchanged when the map does not name it."""
        if label is None:
            return None
        return self.mapping.get(label, label)

    def ignored(self, label: str) -> bool:
        return self.mapping.get(label) == IGNORE


def foreign_labels(labels: Iterable[str | None], classes: Iterable[str], label_map: LabelMap) -> list[str]:
    """Labels that are neither model classes (after the map) nor explicitly ignored, sorted."""
    classes = set(classes)
    return sorted({label for label in labels if label is not None and not label_map.ignored(label)
                   and label_map(label) not in classes})
