"""Class-per-folder datasets (nested sub-folders allowed, as in Matek's TCIA layout) and splits.

Torch-free: the engine's ``bmengine eval`` reads datasets through this module too.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class ImageFolder:
    """Files and integer labels of a class-per-folder dataset; ``classes`` fixes label order."""

    root: Path
    classes: tuple[str, ...]
    files: tuple[Path, ...]
    labels: np.ndarray

    @classmethod
    def scan(cls, root: Path, classes: tuple[str, ...] | None = None) -> "ImageFolder":
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: dataset folder not found")
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if classes is None:
            classes = tuple(found)
        elif unknown := sorted(set(found) - set(classes)):
            raise ValueError(f"{root}: class folders {unknown} are not in the model's class list")
        files, labels = [], []
        for label, name in enumerate(classes):
            folder = root / name
            if not folder.is_dir():
                continue
            for path in sorted(folder.rglob("*")):
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
