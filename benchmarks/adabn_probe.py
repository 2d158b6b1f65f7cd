"""Probe (issue 10): does re-estimating batch-norm statistics on a lab's unlabelled crops (AdaBN)
help the shipped default on wbc_zheng? Adapts the fp32 checkpoint's 16 BatchNorm layers (CoAtNet-0's
convolutional stages; its transformer stages use LayerNorm) on one half of a subset, without
labels, and scores both halves (halves as in benchmarks/cross_lab.py). Needs the [train] extra and
runs/default-cross-lab/checkpoints/last.pt (`make default-model`).

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/adabn_probe.py
Result (2026-11-25, AMD EPYC 2 cores): benchmarks/results/cross-lab-recipes.md, "Test-time BN".
"""
import sys, json, math, csv, copy, time
from pathlib import Path
import numpy as np, torch
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_lab import halves, DATA, CLASSES5
from bmengine.training.checkpoint import load_model
from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

torch.set_num_threads(2)
model, state = load_model(Path(__file__).resolve().parents[1] / "runs/default-cross-lab/checkpoints/last.pt")
classes = ['basophil', 'eosinophil', 'erythroblast', 'ig', 'lymphocyte', 'monocyte', 'neutrophil', 'platelet']
pipe = CropPipeline(PipelineSpec(resize=144, crop=128, mean=(0,0,0), std=(1,1,1), normalize=False, batch_size=64, num_threads=2))
mean = np.array([0.485, 0.456, 0.406], np.float32); std = np.array([0.229, 0.224, 0.225], np.float32)

def load(files):
    out = []
    for s in range(0, len(files), 64):
        b, errs = pipe.decode_to_numpy([Path(f).read_bytes() for f in files[s:s+64]])
        out.append(b)
    x = np.concatenate(out).astype(np.float32) / 255.0
    x = (x - mean) / std
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

def predict(m, x):
    m.eval()
    with torch.no_grad():
        return torch.cat([m(x[s:s+64]) for s in range(0, len(x), 64)]).argmax(1).numpy()

def adapt(m, x, alpha=1.0, passes=1):
    m = copy.deepcopy(m)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)]
    src = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
    for bn in bns:
        bn.reset_running_stats(); bn.momentum = None
    m.train()
    with torch.no_grad():
        for _ in range(passes):
            perm = torch.randperm(len(x))
            for s in range(0, len(x), 32):
                m(x[perm[s:s+32]])
    for bn, (mu, var) in zip(bns, src):
        bn.running_mean.mul_(alpha).add_((1 - alpha) * mu)
        bn.running_var.mul_(alpha).add_((1 - alpha) * var)
    m.eval()
    print("BN layers", len(bns), flush=True)
    return m

res = {}
for subset in ("cellavision_blog", "tecom"):
    h = halves(DATA, subset)
    xa = load([f for f, _ in h["A"]]); xb = load([f for f, _ in h["B"]])
    ya = np.array([c for _, c in h["A"]]); yb = np.array([c for _, c in h["B"]])
    acc = lambda p, y: float((np.array(classes)[p] == y).mean())
    base = (acc(predict(model, xa), ya), acc(predict(model, xb), yb))
    print(subset, "baseline A/B", base, flush=True)
    for alpha in (1.0, 0.5):
        m = adapt(model, xa, alpha)  # adapt on half A (unlabelled), score on B (and A)
        r = (acc(predict(m, xa), ya), acc(predict(m, xb), yb))
        print(subset, f"adabn alpha={alpha} A/B", r, flush=True)
        res[f"{subset}-{alpha}"] = r
    res[f"{subset}-base"] = base
print(json.dumps(res))
