"""Coverage of the differential's 95% intervals on synthetic patients built from real crops.

The shipped model classifies its own validation split once. Half of those crops (stratified) give
the confusion matrix the adjusted interval uses; synthetic patients are drawn from the other half
with known mixtures (Dirichlet proportions over the leukocytes, plus a few erythroblasts and
platelets), and each patient's predicted counts get both intervals. Coverage = share of (patient,
class) pairs whose true base percentage lies inside the interval.

    python benchmarks/interval_coverage.py --patients 300 --cells 200 \
        --json benchmarks/results/interval-coverage.json --md benchmarks/results/interval-coverage.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bmengine.engine.assets import DEFAULT_MODEL
from bmengine.engine.backends import BackendOptions, load_backend
from bmengine.engine.bench import machine_words
from bmengine.engine.evaluate import predict_files
from bmengine.engine.outputs.adjusted import adjusted_proportions
from bmengine.engine.outputs.stats import clopper_pearson, per_base_interval
from bmengine.engine.taxonomy import get_taxonomy
from bmengine.engine.dataset import ImageFolder, stratified_split


def _cp_pct(k: int, n_base: int, excluded: bool) -> tuple[float, float]:
    low, high = per_base_interval(k, n_base) if excluded else clopper_pearson(k, n_base)
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/pbc"))
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--patients", type=int, default=300)
    parser.add_argument("--cells", type=int, default=200, help="leukocytes per patient")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    args = parser.parse_args()

    backend = load_backend(args.model, BackendOptions(threads=2))
    card, taxonomy = backend.card, get_taxonomy(backend.card.taxonomy)
    data = ImageFolder.scan(args.data, tuple(card.classes))
    _, val = stratified_split(data.labels, float(card.training["val_fraction"]), int(card.training["seed"]))
    probs, _ = predict_files(backend, [data.files[i] for i in val])
    truth, predicted = data.labels[val], probs.argmax(axis=1)
    rng = np.random.default_rng(args.seed)
    half_a, half_b = stratified_split(truth, 0.5, args.seed)  # A: confusion matrix, B: patients
    n_classes = len(card.classes)
    confusion = np.zeros((n_classes, n_classes), int)
    np.add.at(confusion, (truth[half_a], predicted[half_a]), 1)
    base = np.array([c in taxonomy.counted for c in card.classes])
    pools = {c: half_b[truth[half_b] == c] for c in range(n_classes)}

    inside = {"clopper_pearson": [], "adjusted": []}
    widths = {"clopper_pearson": [], "adjusted": []}
    for _ in range(args.patients):
        mix = np.zeros(n_classes)
        mix[base] = rng.dirichlet(np.full(base.sum(), 0.7))
        true_counts = rng.multinomial(args.cells, mix)
        for c in np.flatnonzero(~base):
            true_counts[c] = rng.integers(0, 12)  # erythroblasts, platelets: per 100 leukocytes
        chosen = np.concatenate([rng.choice(pools[c], size=k, replace=True) for c, k in enumerate(true_counts)])
        counts = np.bincount(predicted[chosen], minlength=n_classes)
        true_share = true_counts / true_counts[base].sum()
        _, low, high = adjusted_proportions(counts, confusion, base=base, seed=int(rng.integers(1 << 31)))
        n_base = int(counts[base].sum())
        for c in range(n_classes):
            cp_low, cp_high = _cp_pct(int(counts[c]), n_base, not base[c])
            inside["clopper_pearson"].append(cp_low <= true_share[c] <= cp_high)
            inside["adjusted"].append(low[c] - 1e-9 <= true_share[c] <= high[c] + 1e-9)
            widths["clopper_pearson"].append(min(cp_high, 10) - cp_low)
            widths["adjusted"].append(high[c] - low[c])
    result = {
        "model": {"name": card.name, "sha256": card.weights_sha256},
        "machine": machine_words(),
        "patients": args.patients, "cells_per_patient": args.cells, "seed": args.seed,
        "confusion_from": f"{len(half_a)} validation crops (half A)", "patients_from": f"{len(half_b)} validation crops (half B)",
        "coverage": {k: float(np.mean(v)) for k, v in inside.items()},
        "mean_width_pct_points": {k: float(100 * np.mean(v)) for k, v in widths.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.md:
        args.md.write_text(
            "# Coverage of the differential's 95% intervals (synthetic patients from real validation crops)\n\n"
            f"Model {card.name} (sha256 {card.weights_sha256[:12]}…), {result['machine']}. {args.patients} patients of "
            f"{args.cells} leukocytes (Dirichlet(0.7) mixtures) plus 0-11 erythroblasts and platelets each, drawn from "
            f"half B of the validation split; the adjusted interval's confusion matrix comes from half A.\n\n"
            "| interval | coverage of the true base % | mean width (points) |\n|---|---|---|\n"
            + "".join(f"| {k} | {result['coverage'][k]:.3f} | {result['mean_width_pct_points'][k]:.1f} |\n" for k in inside)
            + "\nCommand: `python benchmarks/interval_coverage.py --patients "
            f"{args.patients} --cells {args.cells} --json … --md …`\n")


if __name__ == "__main__":
    main()
