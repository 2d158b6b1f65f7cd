"""Re-draw ``shipped_heldout_sample.csv``: ``python tests/assets/make_shipped_heldout_sample.py``.

The suite re-measures the shipped default model on a fixed, stratified sample of PBC crops it
never trained on: ``PER_CLASS`` crops per class, drawn (seed ``SEED``) from the validation split
its card records (training seed and validation fraction, recomputed exactly as `bmengine train`
drew it). The CSV also records what the model predicted when the sample was drawn, so the suite
can tell a drifting engine (decode, resize, normalisation) from a model that is worse than its card.
Re-run it whenever the shipped default changes (``make default-model``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PBC = HERE.parents[2] / "shared" / "data" / "pbc"
OUT = HERE / "shipped_heldout_sample.csv"
PER_CLASS, SEED = 40, 0


def draw(files: list[Path], classes: tuple[str, ...]) -> list[Path]:
    """``PER_CLASS`` files of every class, at random (fixed seed), in sorted order."""
    rng = np.random.default_rng(SEED)
    picked = []
    for cls in classes:
        of_class = sorted(f for f in files if f.parent.name == cls)
        picked += [of_class[i] for i in sorted(rng.choice(len(of_class), PER_CLASS, replace=False))]
    return picked


def main() -> None:
    from bmengine.engine.assets import DEFAULT_MODEL
    from bmengine.engine.backends import load_backend
    from bmengine.engine.demo import validation_files
    from bmengine.engine.evaluate import predict_files

    backend = load_backend(DEFAULT_MODEL)
    card = backend.card
    held_out = validation_files(PBC, tuple(card.classes), card.training["seed"], card.training["val_fraction"])
    sample = draw(held_out, tuple(card.classes))
    probs, errors = predict_files(backend, sample)
    assert not any(errors), errors
    with open(OUT, "w", newline="") as handle:
        handle.write(f"# model_sha256 {card.weights_sha256}: drawn by tests/assets/{Path(__file__).name}\n")
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "int8_predicted", "int8_confidence"])
        for f, p in zip(sample, probs):
            writer.writerow([f"{f.parent.name}/{f.name}", f.parent.name, card.classes[int(p.argmax())],
                             f"{p.max():.4f}"])
    print(f"{OUT}: {len(sample)} crops; model {card.weights_sha256[:12]}")


if __name__ == "__main__":
    main()
