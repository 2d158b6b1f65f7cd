"""Probe (issue 10 item 2): which per-crop score tells an unseen class best, on the held-out-class runs?

For each run of ``benchmarks/open_set.py`` (a PBC model trained without one class), the trainer's
checkpoint is evaluated in PyTorch (fp32, the trainer's centre crop of its cached resized images,
as the engine preprocesses): logits and penultimate features of the training split (to fit),
the validation split (known) and every crop of the held-out class (unknown). It prints the AUROC
of unknown vs known for each candidate score:

- ``mahalanobis``: the shipped head (tied covariance, Ledoit-Wolf with the 0.1 floor);
- ``energy``: -logsumexp(logits); ``msp``: 1 - max softmax;
- ``react-energy``: energy of the logits recomputed from features clipped at their training
  ``--react-percentile`` (Sun et al. 2021, ReAct);
- ``z-max`` / ``z-sum``: the Mahalanobis and energy scores each standardised on the validation
  split, then their maximum / sum (one threshold for both);
- ``knn-K``: distance to the K-th nearest training feature, features L2-normalised (Sun et al.
  2022, deep nearest neighbours); ``knn-K-bank-N``: the same against N training crops per class,
  the bank size a model file could carry;
- ``relative-mahalanobis``: the class distance minus the distance to one Gaussian fitted on all
  training features (Ren et al. 2021), meant for near-OOD classes.

    python benchmarks/ood_scores_probe.py /tmp/openset/run-no-basophil:basophil /tmp/openset/run-no-ig:ig ...

Decoded images are cached under /tmp/ood_probe_cache (the trainer's image cache, keyed by file list).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

PBC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pbc"


def forward(model, tap, images: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    from bmengine.training.augment import center_crop, normalize

    logits, feats = [], []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            batch = center_crop(torch.from_numpy(np.asarray(images[start : start + 256])), cfg.crop)
            lo, fe = tap(normalize(batch, cfg.mean, cfg.std))
            logits.append(lo.float().numpy())
            feats.append(fe.float().numpy())
    return np.concatenate(logits), np.concatenate(feats)


def logsumexp(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))[:, 0]


def scores_of(run: Path, held_out: str, react_percentile: float) -> dict[str, float]:
    from bmengine.training.checkpoint import load_checkpoint
    from bmengine.training.image_cache import cached_images
    from bmengine.engine.model.networks import ModelSpec, create_model
    from bmengine.training.ood import (MIN_SHRINKAGE, auroc, classifier_layer, feature_model,
                                       fit_tied_gaussian)
    from bmengine.training.trainer import TrainConfig

    state = load_checkpoint(run / "checkpoints" / "last.pt")
    cfg = TrainConfig(**{k: (tuple(v) if k in ("mean", "std") else v) for k, v in state["config"].items()
                         if k in TrainConfig.__dataclass_fields__})
    classes = list(state["classes"])
    model = create_model(ModelSpec(**state["model_spec"])).eval()
    model.load_state_dict(state["model"])
    tap = feature_model(model, len(classes))
    split = json.loads((run / "split.json").read_text())
    sets = {"train": [Path(f) for f in split["train"]], "val": [Path(f) for f in split["val"]],
            "unknown": sorted((PBC / held_out).glob("*.jpg"))}
    out = {}
    for name, files in sets.items():
        images = cached_images(files, cfg.resize, Path("/tmp/ood_probe_cache") / f"{run.name}-{name}")
        out[name] = forward(model, tap, images, cfg)
    train_labels = np.array([classes.index(Path(f).parent.name) for f in sets["train"]])
    stats = fit_tied_gaussian(out["train"][1], train_labels, min_shrinkage=MIN_SHRINKAGE)
    layer = classifier_layer(model, len(classes))
    weight, bias = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    clip = np.percentile(out["train"][1], react_percentile)
    train_feats = out["train"][1]
    background_mean = train_feats.mean(axis=0)
    background = fit_tied_gaussian(train_feats, np.zeros(len(train_feats), dtype=np.int64),
                                   min_shrinkage=MIN_SHRINKAGE)
    train_unit = train_feats / np.linalg.norm(train_feats, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    banks = {f"knn-{k}": (train_unit, k) for k in (1, 10, 50)}
    for per_class in (50, 200):
        keep = np.concatenate([rng.permutation(np.flatnonzero(train_labels == c))[:per_class]
                               for c in np.unique(train_labels)])
        for k in (1, 5):
            banks[f"knn-{k}-bank-{per_class}"] = (train_unit[keep], k)

    def all_scores(logits, feats):
        z = feats @ stats.chol
        centers = stats.projected_means()
        maha = ((z[:, None, :] - centers[None]) ** 2).sum(axis=2).min(axis=1)
        energy = -logsumexp(logits)
        prob = np.exp(logits - logits.max(axis=1, keepdims=True))
        msp = 1 - (prob / prob.sum(axis=1, keepdims=True)).max(axis=1)
        react = -logsumexp(np.minimum(feats, clip) @ weight.T + bias)
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        zb = (feats - background_mean) @ background.chol
        scores = {"mahalanobis": maha, "energy": energy, "msp": msp, "react-energy": react,
                  "relative-mahalanobis": maha - (zb ** 2).sum(axis=1)}
        for name, (bank_feats, k) in banks.items():
            sims = unit @ bank_feats.T
            scores[name] = 1 - np.sort(sims, axis=1)[:, -k]
        return scores

    known, unknown = all_scores(*out["val"]), all_scores(*out["unknown"])
    pairs = [("mahalanobis", "energy"), ("mahalanobis", "react-energy"), ("relative-mahalanobis", "energy")]
    pairs += [(name, "energy") for name in banks]
    for a, b in pairs:
        mu_a, sd_a, mu_b, sd_b = known[a].mean(), known[a].std(), known[b].mean(), known[b].std()
        for s in (known, unknown):
            za, zb = (s[a] - mu_a) / sd_a, (s[b] - mu_b) / sd_b
            s[f"z-max({a},{b})"] = np.maximum(za, zb)
            s[f"z-sum({a},{b})"] = za + zb
    return {name: auroc(unknown[name], known[name]) for name in known}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN_DIR:held_out_class")
    parser.add_argument("--react-percentile", type=float, default=90.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    table = {}
    for item in args.runs:
        run, held_out = item.rsplit(":", 1)
        table[held_out] = scores_of(Path(run), held_out, args.react_percentile)
        print(held_out, {k: round(v, 4) for k, v in table[held_out].items()}, flush=True)
    names = list(next(iter(table.values())))
    print("mean", {k: round(float(np.mean([t[k] for t in table.values()])), 4) for k in names})
    if args.json:
        args.json.write_text(json.dumps({"react_percentile": args.react_percentile, "auroc": table}, indent=2))


if __name__ == "__main__":
    main()
