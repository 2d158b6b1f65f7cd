"""Probe (issue 10): can anything done at inference alone carry a model to another lab?

No training: an exported model (the shipped default by default) scores the same crops as
``cross_lab.py`` (wbc_zheng ``cellavision_blog`` and ``tecom``, halves A and B; a sample of the
model's own PBC validation split) after one of three test-time changes:

- ``zoom``: every crop zoomed about its centre by a fixed factor (the trainer's own ``zoom``:
  bilinear, reflected borders; < 1 makes the cell smaller), with the mean OOD score at each
  factor, to see whether a per-lab zoom picked by the model's own familiarity (lowest OOD score,
  no labels) would pick a better one;
- ``tta``: the mean of the calibrated probabilities over 4 rotations or all 8 rotations/flips
  (the model was trained with both);
- ``background``: each crop's colours normalised by its own background (the median of its
  brightest 30% of pixels; every crop has smear around the cell) to PBC's: a per-channel gain
  (``white-balance``), the same in optical density (``od-background``), or a per-channel linear
  map of the background and the darkest 3% of pixels onto PBC's (``two-point``). The issue asked
  for a normalisation driven by the red-cell background, per crop, so that it does not depend on
  which cells a patient holds (a per-patient Reinhard normalisation did).

    python benchmarks/test_time_probe.py zoom --out zoom.json
    python benchmarks/test_time_probe.py tta --out tta.json
    python benchmarks/test_time_probe.py background --out background.json

Any of these that helped would belong in the shared DALI pipeline (``engine/preprocess``).
"""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path
from typing import Callable

import numpy as np
from cross_lab import DATA, SUBSETS, halves
from PIL import Image

SHIPPED = Path(__file__).resolve().parents[1] / "engine" / "assets" / "models" / "pbc_coatnet0_cs_int8.onnx"


def pbc_split(model: Path, card):
    """PBC as the model's classes see it, and the card's validation split (files, label indices)."""
    from bmengine.engine.cli.eval_cmd import _held_out
    from bmengine.engine.dataset import ImageFolder

    pbc = ImageFolder.scan(DATA / "pbc", tuple(card.classes))
    files, labels = _held_out(pbc, card.training or {}, model)
    return pbc, files, labels


def labelled_sets(classes: list[str], files, labels, pbc_every: int) -> dict[str, tuple[list[Path], np.ndarray, int]]:
    """name -> (files, true classes, size of half A); PBC: every ``pbc_every``-th validation crop."""
    keep = range(0, len(files), pbc_every)
    sets = {"pbc_val": ([Path(files[i]) for i in keep], np.array([classes[labels[i]] for i in keep]), 0)}
    for subset in SUBSETS:
        parts = halves(DATA, subset)
        items = parts["A"] + parts["B"]
        sets[subset] = ([f for f, _ in items], np.array([c for _, c in items]), len(parts["A"]))
    return sets


def png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def infer_blobs(engine, blobs: list[bytes], views: Callable[[np.ndarray], list[np.ndarray]] | None = None):
    """(probabilities (N, V, C), OOD scores (N, V)) through the engine's decoding, V views per crop."""
    probs, scores = [], []
    for start in range(0, len(blobs), 64):
        decoded = engine.pipeline.decode(blobs[start : start + 64])
        if any(decoded.errors):
            raise RuntimeError(f"decode failed: {[e for e in decoded.errors if e][:1]}")
        batches = views(decoded.pixels) if views else [decoded.pixels]
        results = [engine.backend.infer(b) for b in batches]
        probs.append(np.stack([r.probs for r in results], 1))
        scores.append(np.stack([r.ood_score for r in results], 1))
    return np.concatenate(probs), np.concatenate(scores)


def summary(classes: list[str], true: np.ndarray, n_a: int, probs: np.ndarray, scores: np.ndarray) -> dict:
    pred = np.array([classes[i] for i in probs.argmax(1)])
    ok = pred == true
    f1 = [2 * float(((pred == c) & (true == c)).sum()) / float((pred == c).sum() + (true == c).sum())
          for c in sorted(set(true))]
    row = {"n": int(len(ok)), "accuracy": float(ok.mean()), "macro_f1": float(np.mean(f1)),
           "ood_median": float(np.median(scores))}
    if n_a:
        row.update(accuracy_A=float(ok[:n_a].mean()), accuracy_B=float(ok[n_a:].mean()))
    return row


# --- the three probes: each yields (setting, probabilities, scores) for one set's crops -----------

def zoom_probe(engine, files, reference=None, factors=(0.5, 0.6, 0.7, 0.85, 1.0, 1.2, 1.5)):
    import torch

    from bmengine.training.augment import zoom

    size = engine.card.preprocessing.resize
    images = np.stack([np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files])
    base = torch.from_numpy(images).float() / 255
    for factor in factors:
        zoomed = zoom(base, torch.full((len(files),), factor)) if factor != 1.0 else base
        blobs = [png(im) for im in (zoomed.clamp(0, 1) * 255).numpy()]
        probs, scores = infer_blobs(engine, blobs)
        yield f"zoom {factor}", probs[:, 0], scores[:, 0]


def dihedral(batch: np.ndarray) -> list[np.ndarray]:
    """The 8 rotations and flips of an NCHW batch; the first 4 are the rotations alone."""
    out = []
    for flipped in (batch, batch[..., ::-1]):
        out += [np.ascontiguousarray(np.rot90(flipped, k, axes=(2, 3))) for k in range(4)]
    return out


def tta_probe(engine, files, reference=None):
    probs, scores = infer_blobs(engine, [Path(f).read_bytes() for f in files], dihedral)
    for name, views in (("1 view", [0]), ("4 rotations", [0, 1, 2, 3]), ("8 rotations and flips", list(range(8)))):
        yield name, probs[:, views].mean(1), scores[:, views].mean(1)


def _background_and_dark(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = rgb.reshape(-1, 3)
    luma = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    return (np.median(pixels[luma >= np.percentile(luma, 70)], 0),
            np.median(pixels[luma <= np.percentile(luma, 3)], 0))


def background_probe(engine, files, reference: tuple[np.ndarray, np.ndarray]):
    ref_bg, ref_dark = reference

    def white_balance(rgb):
        bg, _ = _background_and_dark(rgb)
        return rgb * (ref_bg / np.maximum(bg, 1))

    def od_background(rgb):
        bg, _ = _background_and_dark(rgb)
        od = -np.log((rgb + 1) / 256.0) + np.log((bg + 1) / 256.0) - np.log((ref_bg + 1) / 256.0)
        return 256 * np.exp(-od) - 1

    def two_point(rgb):
        bg, dark = _background_and_dark(rgb)
        return (rgb - dark) * ((ref_bg - ref_dark) / np.maximum(bg - dark, 5)) + ref_dark

    images = [np.asarray(Image.open(f).convert("RGB")).astype(np.float32) for f in files]
    for name, fn in (("none", lambda x: x), ("white-balance", white_balance), ("od-background", od_background),
                     ("two-point", two_point)):
        probs, scores = infer_blobs(engine, [png(fn(im)) for im in images])
        yield name, probs[:, 0], scores[:, 0]


#: probe name -> generator of (setting, probabilities, OOD scores); ``reference`` is PBC's colours
PROBES = {"zoom": zoom_probe, "tta": tta_probe, "background": background_probe}


def pbc_reference(pbc, held_out_files, every: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """PBC's median background and darkest colours over every ``every``-th *training* crop."""
    held_out = {str(f) for f in held_out_files}
    train = [f for f in sorted(map(str, pbc.files)) if f not in held_out][::every]
    stats = np.array([_background_and_dark(np.asarray(Image.open(f).convert("RGB")).astype(np.float32))
                      for f in train])
    return np.median(stats[:, 0], 0), np.median(stats[:, 1], 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=sorted(PROBES))
    parser.add_argument("--model", type=Path, default=SHIPPED)
    parser.add_argument("--pbc-every", type=int, default=4, help="score every N-th PBC validation crop")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import as_engine

    engine = as_engine(load_backend(args.model))
    card = engine.card
    classes = list(card.classes)
    result: dict = {"model": str(args.model), "weights_sha256": card.weights_sha256, "probe": args.probe, "rows": []}
    pbc, val_files, val_labels = pbc_split(args.model, card)
    reference = None
    if args.probe == "background":
        reference = pbc_reference(pbc, val_files)
        result["pbc_reference"] = {"background": reference[0].tolist(), "dark": reference[1].tolist()}
    for name, (files, true, n_a) in labelled_sets(classes, val_files, val_labels, args.pbc_every).items():
        for setting, probs, scores in PROBES[args.probe](engine, files, reference):
            row = {"set": name, "setting": setting, **summary(classes, true, n_a, probs, scores)}
            result["rows"].append(row)
            halves_text = f" (A {row['accuracy_A']:.3f} / B {row['accuracy_B']:.3f})" if n_a else ""
            print(f"{name:17s} {setting:22s} accuracy {row['accuracy']:.3f}{halves_text} "
                  f"macro-F1 {row['macro_f1']:.4f} "
                  f"OOD median {row['ood_median']:.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
