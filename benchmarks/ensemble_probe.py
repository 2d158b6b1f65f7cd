"""Probe (issue 10): do averaged probabilities of several full-size CoAtNet-0 runs carry better to
other labs, or reach PBC 0.98, at the cost of running each model?

Each checkpoint (fp32, CPU) scores PBC's validation split (all of them were trained on the same
split: seed 0, val_fraction 0.2) and both halves of both wbc_zheng labs, through the engine's own
preprocessing. Every subset of the checkpoints is then scored by the mean of its members'
temperature-free softmax probabilities. Logits are cached in ``--cache`` (re-runs skip models
already scored). Needs the [train] extra.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/ensemble_probe.py CKPT [CKPT ...] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_lab import DATA, halves  # noqa: E402
from feature_classifier_probe import MODEL, features_of, macro_f1  # noqa: E402


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/ensemble_probe"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import torch

    from bmengine.engine.dataset import ImageFolder, stratified_split
    from bmengine.engine.model.card import load_card
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec
    from bmengine.training.checkpoint import load_model
    from bmengine.training.export import preprocessing_of
    from bmengine.training.ood import feature_model

    torch.set_num_threads(2)
    card = load_card(MODEL)
    classes = list(card.classes)
    pbc = ImageFolder.scan(DATA / "pbc", tuple(classes))
    _, val_idx = stratified_split(pbc.labels, 0.2, 0)
    sets = {"pbc_val": ([pbc.files[i] for i in val_idx], pbc.labels[val_idx])}
    for subset in ("cellavision_blog", "tecom"):
        for half, rows in halves(DATA, subset).items():
            sets[f"{subset}_{half}"] = ([f for f, _ in rows], np.array([classes.index(c) for _, c in rows]))

    args.cache.mkdir(parents=True, exist_ok=True)
    probs: dict[str, dict[str, np.ndarray]] = {}
    for ckpt in args.checkpoints:
        key = hashlib.sha256(str(ckpt.resolve()).encode()).hexdigest()[:12]
        cached = args.cache / f"{key}.npz"
        if not cached.is_file():
            t0 = time.perf_counter()
            model, state = load_model(ckpt)
            tap = feature_model(model.float(), len(classes))
            pipeline = CropPipeline(PipelineSpec.from_preprocessing(preprocessing_of(state), batch_size=64))
            np.savez(cached, **{name: features_of(tap, pipeline, files)[0] for name, (files, _) in sets.items()})
            print(f"{ckpt}: scored in {time.perf_counter() - t0:.0f}s", flush=True)
        with np.load(cached) as data:
            probs[str(ckpt)] = {name: softmax(data[name]) for name in sets}

    rows = []
    names = list(probs)
    for size in range(1, len(names) + 1):
        for members in itertools.combinations(names, size):
            row = {"members": list(members)}
            for name, (_, true) in sets.items():
                pred = np.mean([probs[m][name] for m in members], axis=0).argmax(1)
                row[name] = round(macro_f1(true, pred, len(classes)) if name == "pbc_val" else float((pred == true).mean()), 4)
            rows.append(row)
    print("| members | PBC val macro-F1 | cellavision_blog A / B | tecom A / B |")
    print("|---|---:|---:|---:|")
    for r in rows:
        label = " + ".join(Path(m).parts[-3] if "runs" in m else "shipped" for m in r["members"])
        print(f"| {label} | {r['pbc_val']:.4f} | {r['cellavision_blog_A']:.3f} / {r['cellavision_blog_B']:.3f} | "
              f"{r['tecom_A']:.3f} / {r['tecom_B']:.3f} |")
    result = {"checkpoints": names, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
