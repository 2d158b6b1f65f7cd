"""Does the fp16 export keep the fp32 model's accuracy? (issue 13: within 0.5 macro-F1 points)

Usage:
    python benchmarks/fp16_accuracy.py FP32.onnx --split SPLIT [--limit N] [--json OUT.json]

``FP32.onnx`` is an exported fp32 model with its card; its fp16 version is made beside a temporary
copy by training/fp16.py (what ``bmengine export --fp16`` writes). ``SPLIT`` names the held-out
crops: a run's ``split.json`` (its ``val`` list) or a ``file,split`` CSV such as
tests/assets/tiny_split.csv (its ``val`` rows, paths under ``--data``). Each crop's class is its
folder. Both models are scored by ONNX Runtime on the CPU through the engine (``load_backend`` +
``predict_files``, the card's preprocessing and temperature), as ``bmengine eval`` would.

ONNX Runtime runs the fp16 graph's operators that have no fp16 CPU kernel in fp32 between Casts it
inserts itself, so on the CPU this measures fp16 storage (weights and every activation rounded to
fp16) more than fp16 arithmetic; a GPU's fp16 kernels also accumulate in fp16 where TensorRT
chooses to: tests/test_gpu.py compares the fp16 plan itself with ONNX Runtime.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PBC = REPO.parent / "shared" / "data" / "pbc"


def held_out(split: Path, data: Path, limit: int = 0) -> list[Path]:
    if split.suffix == ".json":
        files = [Path(f) if Path(f).is_absolute() else (REPO / f).resolve() for f in json.loads(split.read_text())["val"]]
    else:
        files = [data / row["file"] for row in csv.DictReader(open(split)) if row["split"] == "val"]
    return files[:limit] if limit else files


def score(model: Path, files: list[Path]) -> tuple[np.ndarray, np.ndarray, float]:
    """Probabilities, OOD scores (NaN without them) and img/s through the engine's ONNX Runtime backend."""
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import score_files

    backend = load_backend(model)
    t0 = time.perf_counter()
    got = score_files(backend, files)
    seconds = time.perf_counter() - t0
    backend.close()
    return np.asarray(got.values, np.float64), np.asarray(got.ood_score, np.float64), len(files) / seconds


def compare(fp32: Path, split: Path, data: Path = PBC, limit: int = 0) -> dict:
    from bmengine.engine.metrics import classification_report
    from bmengine.engine.model.card import load_card
    from bmengine.training.fp16 import write_fp16_bundle

    card = load_card(fp32)
    files = held_out(split, data, limit)
    index = {c: i for i, c in enumerate(card.classes)}
    labels = np.asarray([index[f.parent.name] for f in files])
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / fp32.name
        for path in (fp32, fp32.with_name(fp32.name + ".card.json")):
            shutil.copy(path, Path(tmp) / path.name)
        t0 = time.perf_counter()
        fp16 = write_fp16_bundle(copy)
        convert_s = time.perf_counter() - t0
        fp16_card = load_card(fp16)
        rows = {}
        for name, model in (("fp32", copy), ("fp16", fp16)):
            probs, ood, rate = score(model, files)
            ok = ~np.isnan(probs).any(axis=1)
            report = classification_report(labels[ok], probs[ok], card.classes)
            rows[name] = {"probs": probs, "ood": ood, "ok": ok, "img_per_s": round(rate, 1),
                          "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
                          "file_mb": round(model.stat().st_size / 1e6, 2)}
    ok = rows["fp32"]["ok"] & rows["fp16"]["ok"]
    a, b = rows["fp32"]["probs"][ok], rows["fp16"]["probs"][ok]
    result = {
        "model": str(fp32), "held_out": f"{split} ({len(files)} crops)", "fp16_conversion_s": round(convert_s, 2),
        "fp16_record": fp16_card.training["fp16"],
        **{name: {k: r[k] for k in ("accuracy", "macro_f1", "img_per_s", "file_mb")} for name, r in rows.items()},
        "macro_f1_points_lost": round(100 * (rows["fp32"]["macro_f1"] - rows["fp16"]["macro_f1"]), 3),
        "argmax_differs": int((a.argmax(1) != b.argmax(1)).sum()),
        "max_abs_dp": float(np.abs(a - b).max()), "mean_abs_dp": float(np.abs(a - b).mean()),
    }
    oa, ob = rows["fp32"]["ood"][ok], rows["fp16"]["ood"][ok]
    if not np.isnan(oa).all():
        from scipy.stats import spearmanr

        result["ood"] = {"max_rel_diff": float(np.max(np.abs(oa - ob) / np.maximum(np.abs(oa), 1e-6))),
                         "spearman": float(spearmanr(oa, ob).statistic),
                         "flagged_fp32": int((oa > card.ood["threshold"]).sum()),
                         "flagged_fp16_same_threshold": int((ob > card.ood["threshold"]).sum())}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fp32", type=Path)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=PBC, help="root of a CSV split's paths")
    parser.add_argument("--limit", type=int, default=0, help="score only the first N held-out crops")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    from bmengine.engine.bench import machine_words

    result = {"command": "python benchmarks/fp16_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_words(), **compare(args.fp32, args.split, args.data, args.limit)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
