"""Replay: keep some of the original training crops in a fine-tune, so adapting to one lab does not
erase what the model knew.

Fine-tuning a PBC model on 50 crops of another lab's five classes took it from 0.96 to 0.31
macro-F1 on PBC's own validation split (README, 2026-11-25): the three classes the lab did not
label were simply forgotten. Mixing a few crops per class of the base run's *training* split (never
its validation split, which stays the honest "what it may have lost" score) into every fine-tuning
epoch is the standard remedy (rehearsal). The lab's crops are repeated so that they still make up
at least half of what the model sees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bmengine.engine.dataset import ImageFolder


@dataclass(frozen=True)
class ReplaySet:
    files: tuple[Path, ...]
    labels: np.ndarray
    source: str  # where they came from, for the log and the card


def select_replay(train_files: list[Path], source: str, data_dir: Path, classes: tuple[str, ...], per_class: int,
                  seed: int) -> ReplaySet:
    """Up to ``per_class`` crops of each class from a base run's training crops (``source`` says where
    the list came from: its ``split.json``, or the split drawn again from its data folder).

    A crop's class is its top folder under the base run's ``data_dir`` (the trainer's
    class-per-folder layout, nested folders allowed). Files that are gone are skipped; raises
    ``FileNotFoundError`` when none of the list is on this machine (relative paths are read from the
    current directory, as the trainer wrote them).
    """
    by_class: dict[int, list[Path]] = {}
    for path in map(Path, train_files):
        try:
            top = path.relative_to(data_dir).parts[0]
        except ValueError:
            continue
        if top in classes and path.is_file():
            by_class.setdefault(classes.index(top), []).append(path)
    if not by_class:
        raise FileNotFoundError(f"{source}: none of its {len(train_files)} training crops is under {data_dir} "
                                "on this machine (paths are relative to where the base run was trained)")
    rng = np.random.default_rng(seed)
    files: list[Path] = []
    labels: list[int] = []
    for label in sorted(by_class):
        chosen = rng.permutation(len(by_class[label]))[:per_class]
        files += [by_class[label][i] for i in sorted(chosen)]
        labels += [label] * len(chosen)
    return ReplaySet(tuple(files), np.asarray(labels, dtype=np.int64), source)


def write_replay(replay: ReplaySet, classes: tuple[str, ...], path: Path) -> Path:
    """The chosen crops as JSON (``TrainConfig.replay_from`` reads it; the run folder keeps it)."""
    Path(path).write_text(json.dumps({"source": replay.source, "files": [str(f) for f in replay.files],
                                      "classes": [classes[i] for i in replay.labels]}, indent=1))
    return Path(path)


def read_replay(path: Path, classes: tuple[str, ...]) -> ReplaySet:
    record = json.loads(Path(path).read_text())
    unknown = sorted(set(record["classes"]) - set(classes))
    if unknown:
        raise ValueError(f"{path}: replay classes {unknown} are not the model's")
    labels = np.asarray([classes.index(c) for c in record["classes"]], dtype=np.int64)
    return ReplaySet(tuple(Path(f) for f in record["files"]), labels, record["source"])


def with_replay(dataset: ImageFolder, train_idx: np.ndarray, replay: ReplaySet) -> tuple[ImageFolder, np.ndarray]:
    """``dataset`` with the replay crops appended, and training indices that hold them plus the lab's
    own training crops repeated until they are at least as many as the replay crops. Validation
    indices into ``dataset`` are unchanged (the appended crops come after them)."""
    n = len(dataset)
    merged = ImageFolder(dataset.root, dataset.classes, dataset.files + replay.files,
                         np.concatenate([dataset.labels, replay.labels]))
    repeat = max(1, int(np.ceil(len(replay.files) / max(1, len(train_idx)))))
    lab = np.tile(train_idx, repeat)
    return merged, np.concatenate([lab, n + np.arange(len(replay.files))])
