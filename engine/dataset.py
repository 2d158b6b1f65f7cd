"""Class-per-folder datasets (nested sub-folders allowed, as in Matek's TCIA layout) and splits.

Torch-free: `bmengine eval`, the demo and the trainer all read datasets through this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bmengine.engine.labels import LabelMap

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class ImageFolder:
    """Files and integer labels of a class-per-folder dataset; ``classes`` fixes label order."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: np.ndarray

    @classmethod
    def scan(cls, root: Path, classes: tuple[str, ...] | None = None, label_map: "LabelMap | None" = None) -> "ImageFolder":
        """Files in class order, each class's folders and files sorted (the order fixes the split).

        ``label_map`` names the model class of each folder (a folder mapped to no class is skipped).
        """
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset folder not found")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if label_map is not None:
            found = [name for name in found if not label_map.ignored(name)]
        target = {name: label_map(name) if label_map is not None else name for name in found}
        if classes is None:
            classes = tuple(found)
        elif unknown := sorted(name for name in found if target[name] not in classes):
            hint = "" if label_map is not None else " (map your folder names with --label-map)"
            raise ValueError(f"{root}: class folders {unknown} are not in the model's class list{hint}")
        files, labels = [], []
        for label, name in enumerate(classes):
            for folder_name in (f for f in found if target[f] == name):
                for path in sorted((root / folder_name).rglob("*")):
                    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                        files.append(path)
                        labels.append(label)
        if not files:
            raise ValueError(f"{root}: no images found in class sub-folders")
        return cls(root, tuple(classes), tuple(files), np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.files)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class shuffled split; every class with >= 2 images keeps at least one in each part."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        if len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
