"""Offline augmentation to balance classes (HematoNet's remedy for a long tail).

Minority classes of the *training split* get augmented copies (flip, 90-degree rotation,
brightness/contrast jitter) of their own crops until each has ``target`` images. The copies are
made once, before training, and never touch the validation split, so no crop leaks across.
"""

from __future__ import annotations

import numpy as np


def _augment_one(image: np.ndarray, rng: np.random.Generator, jitter: float) -> np.ndarray:
    out = np.rot90(image, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    out = out.astype(np.float32)
    mean = out.mean()
    contrast, brightness = 1 + rng.uniform(-jitter, jitter), 1 + rng.uniform(-jitter, jitter)
    out = ((out - mean) * contrast + mean) * brightness
    return np.clip(out, 0, 255).astype(np.uint8)


def balance_offline(images: np.ndarray, labels: np.ndarray, train_idx: np.ndarray, target: int, seed: int = 0,
                    jitter: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(images, labels, train_idx, source)`` with augmented copies appended.

    ``source[j]`` is the index of the image that copy j was made from (-1 for originals), so
    every synthetic crop can be traced back.
    """
    rng = np.random.default_rng(seed)
    extra_images, extra_labels, sources = [], [], []
    for cls in np.unique(labels[train_idx]):
        members = train_idx[labels[train_idx] == cls]
        for src in rng.choice(members, size=max(0, target - len(members)), replace=True):
            extra_images.append(_augment_one(np.asarray(images[src]), rng, jitter))
            extra_labels.append(cls)
            sources.append(src)
    n = len(images)
    source = np.concatenate([np.full(n, -1), np.asarray(sources, dtype=np.int64)])
    if not extra_images:
        return np.asarray(images), labels, train_idx, source
    images = np.concatenate([np.asarray(images), np.stack(extra_images)])
    labels = np.concatenate([labels, np.asarray(extra_labels, dtype=labels.dtype)])
    train_idx = np.concatenate([train_idx, np.arange(n, n + len(extra_images))])
    return images, labels, train_idx, source
