"""Probe (issue 10): does classifying by distance to the training classes' mean features, instead of
the network's linear head, carry better to other labs?

The shipped default's checkpoint, in fp32 on the CPU. Its penultimate features (the classifier
layer's input) are computed for a stratified sample of its own training crops (class means, and the
tied, shrunk covariance that the OOD head uses: training/ood.py), for its validation split, and for
both wbc_zheng subsets (halves as in benchmarks/cross_lab.py). Each crop is then classified by:
- ``linear``: the network's own head (argmax of the logits; the baseline);
- ``mahalanobis``: the nearest class mean under the tied covariance;
- ``euclidean``: the nearest class mean;
- ``cosine``: the nearest class mean after L2-normalising the features and the means;
- ``knn10-cosine``: the majority of the 10 nearest training crops by cosine similarity.
Needs the [train] extra. No labels of wbc_zheng are used to fit anything.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/feature_classifier_probe.py [--per-class 250] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_lab import DATA, halves  # noqa: E402  (benchmarks/ is a folder of scripts)

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "engine/assets/models/pbc_coatnet0_cs_int8.onnx"
CHECKPOINT = REPO / "engine/assets/models/pbc_coatnet0_cs.checkpoint.pt"


def shipped_default():
    """(card, classes, feature tap, pipeline): the shipped default's checkpoint in fp32 on 2 CPU
    threads, with a second output (its penultimate features), and the engine's pipeline for it."""
    import torch

    from bmengine.engine.model.card import load_card
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec
    from bmengine.training.checkpoint import load_model
    from bmengine.training.ood import feature_model

    torch.set_num_threads(2)
    card = load_card(MODEL)
    classes = list(card.classes)
    model, _ = load_model(CHECKPOINT)
    return (card, classes, feature_model(model.float(), len(classes)),
            CropPipeline(PipelineSpec.from_preprocessing(card.preprocessing, batch_size=64)))


def features_of(tap, pipeline, files: list[Path], batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(logits, penultimate features) of the crops, decoded by the engine's own pipeline."""
    import torch

    logits, feats = [], []
    for s in range(0, len(files), batch):
        pixels, errors = pipeline.decode_to_numpy([Path(f).read_bytes() for f in files[s:s + batch]])
        if any(errors):
            raise RuntimeError(f"decode failed: {[e for e in errors if e][:2]}")
        with torch.inference_mode():
            out, f = tap(torch.from_numpy(pixels))
        logits.append(out.float().numpy())
        feats.append(f.float().numpy())
    return np.concatenate(logits), np.concatenate(feats)


def classifiers(train_f: np.ndarray, train_y: np.ndarray, n_classes: int):
    """name -> function(logits, features) -> predicted class index."""
    from bmengine.training.ood import fit_tied_gaussian

    stats = fit_tied_gaussian(train_f, train_y)
    means = stats.means.astype(np.float64)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    train_unit = unit(train_f.astype(np.float64))

    def mahalanobis(_, f):
        z, centers = f.astype(np.float64) @ stats.chol, means @ stats.chol
        return stats.class_index[((z[:, None] - centers[None]) ** 2).sum(2).argmin(1)]

    def euclidean(_, f):
        return stats.class_index[((f[:, None].astype(np.float64) - means[None]) ** 2).sum(2).argmin(1)]

    def cosine(_, f):
        return stats.class_index[(unit(f.astype(np.float64)) @ unit(means).T).argmax(1)]

    def knn10(_, f):
        nearest = np.argsort(-(unit(f.astype(np.float64)) @ train_unit.T), axis=1)[:, :10]
        votes = train_y[nearest]
        return np.array([np.bincount(v, minlength=n_classes).argmax() for v in votes])

    return {"linear": lambda logits, _: logits.argmax(1), "mahalanobis": mahalanobis, "euclidean": euclidean,
            "cosine": cosine, "knn10-cosine": knn10}


def macro_f1(true: np.ndarray, pred: np.ndarray, n: int) -> float:
    f1 = []
    for c in range(n):
        tp, fp, fn = ((pred == c) & (true == c)).sum(), ((pred == c) & (true != c)).sum(), ((pred != c) & (true == c)).sum()
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=250, help="training crops per class the means are fitted on")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from bmengine.engine.dataset import ImageFolder, stratified_split

    t0 = time.perf_counter()
    card, classes, tap, pipeline = shipped_default()

    pbc = ImageFolder.scan(DATA / "pbc", tuple(classes))
    train_idx, val_idx = stratified_split(pbc.labels, float(card.training["val_fraction"]), int(card.training["seed"]))
    rng = np.random.default_rng(0)
    fit_idx = np.concatenate([rng.permutation(train_idx[pbc.labels[train_idx] == c])[:args.per_class]
                              for c in range(len(classes))])
    _, fit_f = features_of(tap, pipeline, [pbc.files[i] for i in fit_idx])
    fit_y = pbc.labels[fit_idx]
    rules = classifiers(fit_f, fit_y, len(classes))
    print(f"fitted on {len(fit_idx)} training crops ({time.perf_counter() - t0:.0f}s)", flush=True)

    sets = {"pbc_val": ([pbc.files[i] for i in val_idx], pbc.labels[val_idx])}
    for subset in ("cellavision_blog", "tecom"):
        for half, rows in halves(DATA, subset).items():
            sets[f"{subset}_{half}"] = ([f for f, _ in rows], np.array([classes.index(c) for _, c in rows]))
    result: dict = {"model": str(MODEL.relative_to(REPO)), "checkpoint": str(CHECKPOINT.relative_to(REPO)),
                    "fit_crops": int(len(fit_idx)), "rows": {}}
    for name, (files, true) in sets.items():
        logits, feats = features_of(tap, pipeline, files)
        for rule, predict in rules.items():
            pred = predict(logits, feats)
            score = macro_f1(true, pred, len(classes)) if name == "pbc_val" else float((pred == true).mean())
            result["rows"].setdefault(rule, {})[name] = round(score, 4)
        print(name, {r: v[name] for r, v in result["rows"].items()}, flush=True)
    result["seconds"] = round(time.perf_counter() - t0)
    print("| classifier | PBC val macro-F1 | cellavision_blog A / B | tecom A / B |")
    print("|---|---:|---:|---:|")
    for rule, r in result["rows"].items():
        print(f"| {rule} | {r['pbc_val']:.4f} | {r['cellavision_blog_A']:.3f} / {r['cellavision_blog_B']:.3f} | "
              f"{r['tecom_A']:.3f} / {r['tecom_B']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
