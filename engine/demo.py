"""Build the demo's sample slide stores: synthetic patients assembled from real PBC crops.

PBC has no patients, so each sample slide mixes real crops in a known, clinically plausible
proportion. Crops come only from the default model's validation split (never trained on), so the
demo shows honest accuracy. Re-run with ``bmengine build-samples`` (see README).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Leukocyte differentials in percent (sum 100) plus crops outside the base per 100 leukocytes.
MIXTURES: dict[str, dict[str, float]] = {
    "patient-01-normal": {"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 3, "basophil": 1,
                          "platelet": 10},
    "patient-02-eosinophilia": {"neutrophil": 48, "lymphocyte": 25, "monocyte": 6, "eosinophil": 19,
                                "basophil": 2, "platelet": 10},
    "patient-03-left-shift": {"neutrophil": 70, "ig": 14, "lymphocyte": 10, "monocyte": 5, "eosinophil": 1,
                              "platelet": 10},
    "patient-04-lymphocytosis": {"lymphocyte": 66, "neutrophil": 27, "monocyte": 5, "eosinophil": 1,
                                 "basophil": 1, "platelet": 10},
    "patient-05-leukoerythroblastic": {"neutrophil": 55, "ig": 12, "lymphocyte": 20, "monocyte": 9,
                                       "eosinophil": 3, "basophil": 1, "erythroblast": 8, "platelet": 15},
}


@dataclass(frozen=True)
class SampleConfig:
    data_dir: Path  # ../shared/data/pbc
    out_dir: Path
    split_seed: int = 0  # the default model's training seed and validation share:
    val_fraction: float = 0.2  # the split is recomputed exactly as `bmengine train` made it
    leukocytes_per_slide: int = 200
    seed: int = 7


def validation_files(data_dir: Path, classes: tuple[str, ...], seed: int, val_fraction: float) -> list[Path]:
    """The crops `bmengine train --seed SEED --val-fraction F` held out (same scan, same split)."""
    from bmengine.engine.dataset import ImageFolder, stratified_split

    data = ImageFolder.scan(Path(data_dir), classes)
    _, val = stratified_split(data.labels, val_fraction, seed)
    return [data.files[i] for i in val]


def _counts(mixture: dict[str, float], n_base: int, excluded: frozenset[str]) -> dict[str, int]:
    """Largest-remainder rounding, so base counts add up to exactly ``n_base``."""
    base = {c: p for c, p in mixture.items() if c not in excluded}
    raw = {c: n_base * p / sum(base.values()) for c, p in base.items()}
    counts = {c: int(np.floor(v)) for c, v in raw.items()}
    for c in sorted(raw, key=lambda c: raw[c] - counts[c], reverse=True)[: n_base - sum(counts.values())]:
        counts[c] += 1
    counts.update({c: int(round(n_base * p / 100)) for c, p in mixture.items() if c in excluded})
    return counts


def build_sample_slides(cfg: SampleConfig) -> list[Path]:
    from bmengine.engine.store import write_slide_store
    from bmengine.engine.taxonomy import get_taxonomy

    taxonomy = get_taxonomy("pbc-blood-8")
    val = validation_files(cfg.data_dir, taxonomy.classes, cfg.split_seed, cfg.val_fraction)
    by_class: dict[str, list[Path]] = {c: [] for c in taxonomy.classes}
    for f in val:
        by_class[f.parent.name].append(f)
    rng = np.random.default_rng(cfg.seed)
    written = []
    for slide_id, mixture in MIXTURES.items():
        counts = _counts(mixture, cfg.leukocytes_per_slide, taxonomy.excluded)
        files, labels = [], []
        for cls, k in counts.items():  # without replacement within a patient
            files += list(rng.choice(by_class[cls], size=k, replace=False))
            labels += [cls] * k
        order = rng.permutation(len(files))  # a smear is not sorted by class
        files, labels = [files[i] for i in order], [labels[i] for i in order]
        n_base = sum(k for c, k in counts.items() if c not in taxonomy.excluded)
        known = {c: 100.0 * counts.get(c, 0) / n_base for c in taxonomy.classes}
        provenance = {
            "kind": "synthetic patient from real PBC crops (Acevedo et al. 2020, CC BY 4.0)",
            "intended_mixture": mixture,
            "known_mixture_pct": known,
            "crops_from": f"validation split of the default model (seed {cfg.split_seed}, "
                          f"{cfg.val_fraction:.0%}), never trained on",
            "seed": cfg.seed,
        }
        path = write_slide_store(
            Path(cfg.out_dir) / f"{slide_id}.zarr", slide_id,
            [Path(f).read_bytes() for f in files], [str(Path(*Path(f).parts[-2:])) for f in files],
            patient_id="-".join(slide_id.split("-")[:2]),
            labels=labels, provenance=provenance,
        )
        written.append(path)
    return written
