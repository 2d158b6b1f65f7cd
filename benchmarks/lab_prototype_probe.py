"""Probe (issue 10, item 6): can a lab's few labelled crops adapt the default without training it?

The shipped default's checkpoint, in fp32 on the CPU, and its penultimate features (as
benchmarks/feature_classifier_probe.py). Each wbc_zheng lab is split as `bmengine finetune` splits
it (stratified half, seed 0): the labelled half gives each of the lab's classes a prototype (its
mean feature), and the held-out half is scored. Rules:
- ``linear``: the network's own head, zero-shot (the baseline);
- ``lab+pbc prototypes``: nearest prototype by cosine, the lab's prototypes for its classes and
  PBC's (250 training crops per class) for the others, so PBC's classes stay reachable;
- ``logistic probe``: a multinomial logistic regression on the features, trained on the lab's
  labelled half plus 25 PBC training crops per class (the fine-tune's replay), the network frozen.
Each rule is also scored on PBC's validation split (macro-F1): what the lab's adaptation costs at home.
Needs the [train] extra and scikit-learn (the [test] extra).

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/lab_prototype_probe.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_lab import DATA  # noqa: E402
from feature_classifier_probe import CHECKPOINT, MODEL, REPO, features_of, macro_f1, shipped_default  # noqa: E402


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from sklearn.linear_model import LogisticRegression

    from bmengine.engine.dataset import ImageFolder, stratified_split
    from bmengine.engine.labels import LabelMap

    t0 = time.perf_counter()
    card, classes, tap, pipeline = shipped_default()
    n = len(classes)

    pbc = ImageFolder.scan(DATA / "pbc", tuple(classes))
    train_idx, val_idx = stratified_split(pbc.labels, float(card.training["val_fraction"]), int(card.training["seed"]))
    rng = np.random.default_rng(0)
    pick = lambda k: np.concatenate([rng.permutation(train_idx[pbc.labels[train_idx] == c])[:k] for c in range(n)])  # noqa: E731
    fit_idx = pick(250)
    _, pbc_fit = features_of(tap, pipeline, [pbc.files[i] for i in fit_idx])
    pbc_fit_y = pbc.labels[fit_idx]
    pbc_means = np.stack([pbc_fit[pbc_fit_y == c].mean(0) for c in range(n)])
    replay = np.concatenate([np.flatnonzero(pbc_fit_y == c)[:25] for c in range(n)])
    val_logits, val_f = features_of(tap, pipeline, [pbc.files[i] for i in val_idx])
    val_y = pbc.labels[val_idx]
    print(f"PBC features ({time.perf_counter() - t0:.0f}s)", flush=True)

    result: dict = {"model": str(MODEL.relative_to(REPO)), "checkpoint": str(CHECKPOINT.relative_to(REPO)),
                    "split": "stratified half, seed 0 (as bmengine finetune)", "labs": {}}
    for lab in ("cellavision_blog", "tecom"):
        data = ImageFolder.scan(DATA / "wbc_zheng" / lab, tuple(classes), LabelMap({"_masks": ""}, "skip _masks"))
        labelled, held = stratified_split(data.labels, 0.5, 0)
        logits, feats = features_of(tap, pipeline, data.files)
        y = data.labels
        present = np.unique(y[labelled])
        means = pbc_means.copy()
        means[present] = np.stack([feats[labelled][y[labelled] == c].mean(0) for c in present])
        by_prototype = lambda f: (unit(f) @ unit(means).T).argmax(1)  # noqa: E731
        probe = LogisticRegression(C=1.0, max_iter=2000)
        probe.fit(np.concatenate([feats[labelled], pbc_fit[replay]]), np.concatenate([y[labelled], pbc_fit_y[replay]]))
        rules = {"linear": (logits[held].argmax(1), val_logits.argmax(1)),
                 "lab+pbc prototypes": (by_prototype(feats[held]), by_prototype(val_f)),
                 "logistic probe": (probe.predict(feats[held]), probe.predict(val_f))}
        rows = {}
        for rule, (lab_pred, pbc_pred) in rules.items():
            rows[rule] = {"lab_held_out_accuracy": round(float((lab_pred == y[held]).mean()), 4),
                          "pbc_val_macro_f1": round(macro_f1(val_y, pbc_pred, n), 4)}
            print(lab, rule, rows[rule], flush=True)
        result["labs"][lab] = {"labelled": int(len(labelled)), "held_out": int(len(held)), "rules": rows}
    result["seconds"] = round(time.perf_counter() - t0)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
