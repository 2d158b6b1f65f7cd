"""Cross-lab scores of exported models: PBC validation vs two other labs' white cells (wbc_zheng).

Usage:
    python benchmarks/cross_lab.py MODEL.onnx [MODEL.onnx ...] --out ROWS.json [--recipe NAME ...]
                                   [--pbc-recompute] [--markdown TABLE.md]

For each model (an ``.onnx`` with its card, loaded through the engine exactly as ``bmengine run``
would: ``load_backend`` + ``predict_files``, DALI preprocessing from the card) it reports

- ``cellavision_blog`` (100 crops, 300x300) and ``tecom`` (300 crops, 120x120) of
  ``../shared/data/wbc_zheng``: accuracy and macro-F1 over the 5 classes present (neutrophil,
  lymphocyte, monocyte, eosinophil, basophil), the prediction being the argmax over all the model's
  classes (a crop called ig, erythroblast or platelet is simply wrong), and the confusion matrix
  (rows: the 5 true classes; columns: every model class);
- each subset split into two documented halves: within each class, files in sorted name order, the
  first ceil(n/2) are half **A** and the rest half **B**. A recipe is chosen on half A; half B stays
  an untouched hold-out (wbc_zheng is a test set: never trained on);
- PBC validation: the card's own numbers (``metrics.validation``, scored through the engine at
  export on the run's held-out split). ``--pbc-recompute`` scores the model again on the split
  ``bmengine eval --held-out`` reproduces (seed and val_fraction of the card over all of
  ``pbc/``; only right for runs trained without ``--limit-per-class``).

``--out`` gets one JSON row per model (an existing file's rows for other models are kept, a row for
the same model path is replaced); ``--markdown`` renders every row of ``--out`` as a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SUBSETS = ("cellavision_blog", "tecom")
CLASSES5 = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")


def halves(data: Path, subset: str) -> dict[str, list[tuple[Path, str]]]:
    """``{"A": [(file, class), ...], "B": [...]}``: per class, sorted names, first ceil(n/2) in A."""
    rows = [r for r in csv.DictReader(open(data / "wbc_zheng" / "manifest.csv")) if r["source"] == subset]
    out: dict[str, list[tuple[Path, str]]] = {"A": [], "B": []}
    for cls in CLASSES5:
        files = sorted(r["file"] for r in rows if r["class"] == cls)
        cut = math.ceil(len(files) / 2)
        out["A"] += [(data / "wbc_zheng" / f, cls) for f in files[:cut]]
        out["B"] += [(data / "wbc_zheng" / f, cls) for f in files[cut:]]
    return out


def score(true: list[str], pred: list[str], model_classes: list[str]) -> dict:
    """Accuracy, macro-F1 over the 5 present classes, confusion (true 5 x predicted model classes)."""
    true_a, pred_a = np.asarray(true), np.asarray(pred)
    f1s = {}
    for c in CLASSES5:
        if not (true_a == c).any():
            continue
        tp = float(((true_a == c) & (pred_a == c)).sum())
        precision = tp / max(1.0, float((pred_a == c).sum()))
        recall = tp / float((true_a == c).sum())
        f1s[c] = 0.0 if tp == 0 else 2 * precision * recall / (precision + recall)
    confusion = [[int(((true_a == t) & (pred_a == p)).sum()) for p in model_classes] for t in CLASSES5]
    return {"n": len(true), "accuracy": float((true_a == pred_a).mean()) if len(true) else float("nan"),
            "macro_f1": float(np.mean(list(f1s.values()))), "per_class_f1": f1s,
            "confusion": {"rows": list(CLASSES5), "columns": list(model_classes), "matrix": confusion}}


def evaluate_model(model: Path, data: Path = DATA, pbc_recompute: bool = False, recipe: str | None = None) -> dict:
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import predict_files

    backend = load_backend(model)
    card = backend.card
    classes = list(card.classes)
    training = card.training or {}
    row: dict = {
        "model": str(model), "name": card.name, "recipe": recipe, "precision": card.precision,
        "weights_sha256": card.weights_sha256, "backbone": card.architecture.get("backbone"),
        "preprocessing": {"resize": card.preprocessing.resize, "crop": card.preprocessing.crop},
        "augmentation": training.get("augmentation", {"preset": "basic"}),
        "train_minutes": round(training.get("train_seconds", float("nan")) / 60, 1),
        "train_img_per_s": training.get("train_img_per_s"),
        "epochs": training.get("epochs"), "command": training.get("command", ""),
    }
    validation = (card.metrics or {}).get("validation", {})
    row["pbc_val"] = {"source": "card (engine, at export, run's split)", "n": validation.get("n"),
                      "accuracy": validation.get("accuracy"), "macro_f1": validation.get("macro_f1")}
    if pbc_recompute:
        from bmengine.engine.cli.eval_cmd import _held_out
        from bmengine.engine.evaluate import evaluate_files
        from bmengine.engine.dataset import ImageFolder

        pbc = ImageFolder.scan(data / "pbc", tuple(classes))
        files, labels = _held_out(pbc, training, model)
        report = evaluate_files(backend, files, labels)
        row["pbc_val"] = {"source": "recomputed (eval --held-out split)", "n": report["n"],
                          "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}
    t0 = time.perf_counter()
    for subset in SUBSETS:
        parts = halves(data, subset)
        files = [f for half in ("A", "B") for f, _ in parts[half]]
        probs, errors = predict_files(backend, files)
        if any(errors):
            raise RuntimeError(f"{subset}: {sum(e is not None for e in errors)} files failed, first: "
                               f"{next(e for e in errors if e)}")
        pred = [classes[i] for i in probs.argmax(axis=1)]
        n_a = len(parts["A"])
        true = [c for half in ("A", "B") for _, c in parts[half]]
        row[subset] = {"A": score(true[:n_a], pred[:n_a], classes), "B": score(true[n_a:], pred[n_a:], classes),
                       "all": score(true, pred, classes)}
    row["wbc_seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _fmt(v, digits=3) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    head = ("| recipe | backbone | PBC val macro-F1 | cellavision_blog acc A / B (all) | tecom acc A / B (all) "
            "| wbc macro-F1 cv / tecom | train min | img/s | command |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        cv, tc = r["cellavision_blog"], r["tecom"]
        lines.append(
            f"| {r.get('recipe') or r['name']} | {r['backbone']} | {_fmt(r['pbc_val']['macro_f1'], 4)} "
            f"| {_fmt(cv['A']['accuracy'])} / {_fmt(cv['B']['accuracy'])} ({_fmt(cv['all']['accuracy'])}) "
            f"| {_fmt(tc['A']['accuracy'])} / {_fmt(tc['B']['accuracy'])} ({_fmt(tc['all']['accuracy'])}) "
            f"| {_fmt(cv['all']['macro_f1'])} / {_fmt(tc['all']['macro_f1'])} "
            f"| {_fmt(r['train_minutes'], 1)} | {_fmt(r['train_img_per_s'], 0)} | `{r['command']}` |")
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="JSON file of rows (updated in place)")
    parser.add_argument("--recipe", action="append", default=[], help="a label per model, in order")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--pbc-recompute", action="store_true")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    rows = json.loads(args.out.read_text()) if args.out.is_file() else []
    for i, model in enumerate(args.models):
        recipe = args.recipe[i] if i < len(args.recipe) else None
        row = evaluate_model(model, args.data, args.pbc_recompute, recipe)
        rows = [r for r in rows if r["model"] != str(model)] + [row]
        cv, tc = row["cellavision_blog"], row["tecom"]
        print(f"{recipe or model}: PBC val macro-F1 {_fmt(row['pbc_val']['macro_f1'], 4)}; "
              f"cellavision_blog acc A {_fmt(cv['A']['accuracy'])} B {_fmt(cv['B']['accuracy'])}; "
              f"tecom acc A {_fmt(tc['A']['accuracy'])} B {_fmt(tc['B']['accuracy'])}", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(rows))


if __name__ == "__main__":
    main()
