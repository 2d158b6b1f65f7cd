"""Open-set evaluation (issue 10 items 2 and 4): does the model know what it does not know, and are
its confidences calibrated?

A class of PBC is held out of training entirely (a class-per-folder copy of PBC made of symbolic
links, without that class's folder; ``make-data``); the run is trained with the 8-class taxonomy,
so the model has the class's output but never saw one of its crops. ``evaluate`` exports the run
with the OOD head and the temperature (training/export.py), then scores through the engine's own
path (DALI preprocessing + ONNX Runtime backend), fp32 and int8:

- unknown: every crop of the held-out class (none was trained on);
- known: the run's validation split (trained classes only; the threshold and T are fitted on it),
  and, as an independent check of the false-flag rate and of calibration, PBC crops of the trained
  classes that the run never used (``--limit-per-class`` left them out), up to ``--unused`` of them.

It reports the AUROC of unknown vs known for the Mahalanobis score (the model's ``ood_score``
output), the energy score and 1 - max softmax (both from the same logits), the share of each set
above the card's threshold, and ECE before/after temperature scaling. ``bm-samples`` runs
``bmengine ingest`` + ``bmengine run`` on ../shared/data/bm_samples (Matek marrow: blasts, plasma
cells... are classes no PBC model has) and lists which crops the engine flags ``unknown``.
``report`` writes the Markdown + JSON record.

    python benchmarks/open_set.py make-data basophil --out /tmp/openset/data-no-basophil
    bmengine train /tmp/openset/data-no-basophil --out /tmp/openset/run-no-basophil --taxonomy pbc-blood-8 ...
    python benchmarks/open_set.py evaluate /tmp/openset/run-no-basophil --held-out basophil --json /tmp/openset/basophil.json
    python benchmarks/open_set.py evaluate ... --int8-keep-fp32 /stages.3/   # int8 with the last stage fp32
    python benchmarks/open_set.py bm-samples MODEL.onnx --json /tmp/openset/bm.json
    python benchmarks/open_set.py report /tmp/openset/*.json --out benchmarks/results/open-set
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PBC = REPO.parent / "shared" / "data" / "pbc"
BM = REPO.parent / "shared" / "data" / "bm_samples"


def make_data(held_out: str, out: Path, pbc: Path = PBC) -> Path:
    """PBC without one class: a tree of symbolic links to the files (nothing copied)."""
    classes = sorted(p.name for p in pbc.iterdir() if p.is_dir())
    if held_out not in classes:
        raise SystemExit(f"{held_out!r} is not a class folder of {pbc} ({', '.join(classes)})")
    for cls in classes:
        if cls == held_out:
            continue
        (out / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((pbc / cls).glob("*.jpg")):
            link = out / cls / f.name
            if not link.exists():
                link.symlink_to(f.resolve())
    return out


def _scores(path: Path, files: list[str]) -> dict:
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import score_files

    backend = load_backend(path)
    logits, ood, errors = score_files(backend, [Path(f) for f in files], raw=True)
    if any(errors):
        raise SystemExit(f"{path}: {sum(e is not None for e in errors)} crops failed: {next(e for e in errors if e)}")
    return {"logits": logits.astype(np.float64), "ood": ood.astype(np.float64)}


#: scores compared: the one the card's threshold applies to, the graph's distance, two logit scores
SCORES = ("card_score", "mahalanobis", "energy", "max_softmax")


def _labels(files: list[str], classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[Path(f).parent.name] for f in files])


def evaluate(run: Path, held_out: str, unused: int = 1000, pbc: Path = PBC, seed: int = 0,
             int8_keep_fp32: tuple[str, ...] = ()) -> dict:
    """``int8_keep_fp32``: node-name fragments the int8 export leaves fp32 (``bmengine export
    --int8-keep-fp32``); such an export goes to ``RUN/export-keep-fp32/``, beside the plain one."""
    from bmengine.engine.backends.ood_score import score_for_card
    from bmengine.engine.metrics import expected_calibration_error
    from bmengine.engine.model.card import load_card
    from bmengine.training import ood
    from bmengine.training.calibrate import softmax_t
    from bmengine.training.export import ExportConfig, export

    fp32 = run / ("export-keep-fp32" if int8_keep_fp32 else "export") / "openset.onnx"
    t0 = time.perf_counter()
    if not (fp32.with_name("openset_int8.onnx.card.json")).is_file():
        export(ExportConfig(run / "checkpoints" / "last.pt", fp32, name=f"openset-no-{held_out}",
                            int8_keep_fp32=tuple(int8_keep_fp32)))
    export_seconds = time.perf_counter() - t0
    split = json.loads((run / "split.json").read_text())
    card = load_card(fp32)
    classes = list(card.classes)
    used = {(Path(f).parent.name, Path(f).name) for part in ("train", "val") for f in split[part]}
    if any(c == held_out for c, _ in used):
        raise SystemExit(f"{run}: its split holds {held_out} crops: it was not trained without that class")
    val = split["val"]
    unknown = [str(f) for f in sorted((pbc / held_out).glob("*.jpg"))]
    spare = [str(f) for cls in classes if cls != held_out for f in sorted((pbc / cls).glob("*.jpg"))
             if (cls, f.name) not in used]
    rng = np.random.default_rng(seed)
    spare = sorted(rng.permutation(spare)[:unused].tolist()) if len(spare) > unused else spare
    result = {"held_out": held_out, "run": str(run), "classes": classes, "n_train": len(split["train"]),
              "n_val": len(val), "n_unknown": len(unknown), "n_unused_known": len(spare),
              "export_seconds": round(export_seconds, 1), "int8_keep_fp32": list(int8_keep_fp32), "models": {}}
    for precision, path in (("fp32", fp32), ("int8", fp32.with_name("openset_int8.onnx"))):
        c = load_card(path)
        t = c.temperature
        threshold = float(c.ood["threshold"])
        sets = {"val": val, "unknown": unknown, **({"unused": spare} if spare else {})}  # none unused: all of PBC trained
        got = {name: _scores(path, files) for name, files in sets.items()}
        scores = {name: {"card_score": score_for_card(c.ood, g["ood"], g["logits"]).astype(np.float64),
                         "mahalanobis": g["ood"], "energy": ood.energy_score(g["logits"]),
                         "max_softmax": ood.max_softmax_score(g["logits"])} for name, g in got.items()}
        row: dict = {"card_ood": c.ood, "card_calibration": c.calibration, "auroc": {}, "auroc_vs_unused": {},
                     "flagged_at_card_threshold": {}, "detected_at_5pct_val_false_flags": {}}
        for score in SCORES:
            row["auroc"][score] = round(ood.auroc(scores["unknown"][score], scores["val"][score]), 4)
            if "unused" in sets:
                row["auroc_vs_unused"][score] = round(ood.auroc(scores["unknown"][score], scores["unused"][score]), 4)
            cut = ood.threshold_at(scores["val"][score], c.ood["false_flag_rate"])
            row["detected_at_5pct_val_false_flags"][score] = {
                name: round(float(np.mean(scores[name][score] > cut)), 4) for name in sets}
        row["flagged_at_card_threshold"] = {name: round(float(np.mean(scores[name]["card_score"] > threshold)), 4)
                                            for name in sets}
        # the same threshold fitted on one half of the validation split, measured on the other (2 folds)
        order = np.random.default_rng(seed).permutation(len(val))
        halves = np.array_split(order, 2)
        cross = [float(np.mean(scores["val"]["card_score"][b] >
                               ood.threshold_at(scores["val"]["card_score"][a], c.ood["false_flag_rate"])))
                 for a, b in (halves, halves[::-1])]
        row["val_flagged_cross_fitted"] = round(float(np.mean(cross)), 4)
        # calibration, on the validation split (where T was fitted) and on the unused known crops
        for name in ("val", "unused") if "unused" in sets else ("val",):
            labels = _labels(sets[name], classes)
            logits = got[name]["logits"]
            row[f"ece_{name}"] = {"before": round(expected_calibration_error(labels, softmax_t(logits, 1.0)), 5),
                                  "after": round(expected_calibration_error(labels, softmax_t(logits, t)), 5),
                                  "accuracy": round(float(np.mean(logits.argmax(1) == labels)), 4)}
        # the held-out class: what the model calls it, and how confident it is
        preds = got["unknown"]["logits"].argmax(1)
        row["unknown_predicted_as"] = {classes[k]: int(v) for k, v in zip(*np.unique(preds, return_counts=True))}
        row["unknown_mean_confidence"] = round(float(softmax_t(got["unknown"]["logits"], t).max(1).mean()), 4)
        result["models"][precision] = row
        print(f"{held_out} {precision}: AUROC card score ({c.ood['score']}) {row['auroc']['card_score']:.4f}, "
              f"maha {row['auroc']['mahalanobis']:.4f} energy "
              f"{row['auroc']['energy']:.4f} msp {row['auroc']['max_softmax']:.4f}; flagged "
              f"{row['flagged_at_card_threshold']}", flush=True)
    ood32 = _scores(fp32, val[:256])["ood"]
    ood8 = _scores(fp32.with_name("openset_int8.onnx"), val[:256])["ood"]
    result["int8_vs_fp32_score"] = {"median_ratio": round(float(np.median(ood8 / ood32)), 4),
                                    "spearman": round(_spearman(ood8, ood32), 4), "n": len(ood32)}
    return result


def _share(value: float | None) -> str:
    return "none unused" if value is None else f"{value:.1%}"


def _ece(record: dict | None) -> str:
    return "none unused" if record is None else f"{record['before']:.4f} → {record['after']:.4f}"


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def bm_samples(model: Path, work: Path, bm: Path = BM, run: Path | None = None) -> dict:
    """``bmengine ingest`` + ``bmengine run`` on the 44 Matek crops; per crop: the engine's flags.
    With ``run`` (the model's training run), also how many crops the energy and max-softmax scores
    would flag at their own 5% validation threshold, for comparison."""
    import pandas as pd

    work.mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(open(bm / "manifest.csv")))
    manifest = work / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "slide_id", "label"])
        for r in rows:
            writer.writerow([str(bm / r["file"]), "bm_samples", r["class"]])
    label_map = REPO / "engine" / "assets" / "label_maps" / "matek_to_pbc.csv"
    seen = {r["source"]: r["model_class"] for r in csv.DictReader(open(label_map))}
    slides, out = work / "slides", work / "out"
    cli = [sys.executable, "-m", "bmengine.engine.cli.app"]
    subprocess.run(cli + ["ingest", "--manifest", str(manifest), "--out", str(slides)], check=True, capture_output=True)
    subprocess.run(cli + ["run", str(slides), "--model", str(model), "--out", str(out), "--label-map", str(label_map)],
                   capture_output=True)  # exit status 3 is fine (an error row); the table is what counts
    cells = pd.read_parquet(out / "bm_samples" / "cells.parquet")
    by_file = {r["file"]: r for r in rows}
    crops = []
    for _, cell in cells.iterrows():
        rel = str(Path(cell["source"]).relative_to(bm))
        info = by_file[rel]
        flags = [f for f in str(cell["qc_flags"] or "").split(";") if f]
        crops.append({"file": rel, "class": info["class"], "garbled_in_manifest": info["listed_as"] != "sample",
                      "seen_class": bool(seen.get(info["class"])), "predicted": cell["predicted"],
                      "confidence": round(float(cell["confidence"]), 4), "ood_score": round(float(cell["ood_score"]), 2),
                      "qc_flags": flags, "unknown": "unknown" in flags})
    from bmengine.engine.model.card import load_card

    card = load_card(model)

    def share(select) -> dict:
        chosen = [c for c in crops if select(c)]
        return {"n": len(chosen), "flagged_unknown": sum(c["unknown"] for c in chosen),
                **{f"{name}_flagged": sum(c.get(f"{name}_flagged", False) for c in chosen)
                   for name in ("energy", "max_softmax")}}

    logit_scores = {}
    if run is not None:
        from bmengine.training import ood

        val = json.loads((run / "split.json").read_text())["val"]
        val_logits = _scores(model, val)["logits"]
        files = [str(bm / c["file"]) for c in crops]
        bm_logits = _scores(model, files)["logits"]
        for name, fn in (("energy", ood.energy_score), ("max_softmax", ood.max_softmax_score)):
            cut = ood.threshold_at(fn(val_logits), card.ood["false_flag_rate"])
            flagged = fn(bm_logits) > cut
            for c, hit in zip(crops, flagged):
                c[f"{name}_flagged"] = bool(hit)
            logit_scores[name] = {"threshold": cut}
    return {"model": str(model), "model_name": card.name, "threshold": card.ood.get("threshold"),
            "temperature": card.temperature, "crops": crops, "logit_scores": logit_scores,
            "summary": {"unseen_class_clean": share(lambda c: not c["seen_class"] and not c["garbled_in_manifest"]),
                        "seen_class_clean": share(lambda c: c["seen_class"] and not c["garbled_in_manifest"]),
                        "garbled": share(lambda c: c["garbled_in_manifest"])}}


def report(paths: list[Path], out: Path, commands: str = "", notes: str = "") -> None:
    runs = [json.loads(p.read_text()) for p in paths]
    held = [r for r in runs if "held_out" in r]
    bm = next((r for r in runs if "crops" in r), None)
    lines = ["# Open-set scoring and calibrated confidences (issue 10 items 2 and 4)", ""]
    machine = _machine()
    lines += [f"Machine: {machine}. Recorded {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    if notes:
        lines += [notes.strip(), ""]
    if commands:
        lines += ["## Commands", "", "```", commands.strip(), "```", ""]
    for precision in ("fp32", "int8"):
        lines += [f"## Held-out class AUROC ({precision})", "",
                  "unknown = every PBC crop of the held-out class; known = the run's validation split "
                  "(trained classes). Higher is better; 0.5 = chance.", "",
                  "| held-out class | card's score (ood_score column) | Mahalanobis (graph output) | energy | max softmax "
                  "| unknown flagged at threshold | val flagged (in-sample / cross-fitted) | unused known crops flagged "
                  "| val accuracy |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in held:
            m = r["models"][precision]
            f = m["flagged_at_card_threshold"]
            card_score = m["auroc"].get("card_score", m["auroc"]["mahalanobis"])  # older records: the graph's
            lines.append(f"| {r['held_out']} | {card_score:.4f} ({m['card_ood']['score']}) | "
                         f"{m['auroc']['mahalanobis']:.4f} | {m['auroc']['energy']:.4f} | "
                         f"{m['auroc']['max_softmax']:.4f} | {f['unknown']:.1%} | {f['val']:.1%} / "
                         f"{m['val_flagged_cross_fitted']:.1%} | {_share(f.get('unused'))} | {m['ece_val']['accuracy']:.4f} |")
        if held:
            mean = {s: np.mean([r["models"][precision]["auroc"].get(s, r["models"][precision]["auroc"]["mahalanobis"])
                                for r in held]) for s in SCORES}
            lines.append(f"| **mean** | **{mean['card_score']:.4f}** | {mean['mahalanobis']:.4f} | {mean['energy']:.4f} | "
                         f"{mean['max_softmax']:.4f} | | | | |")
        lines.append("")
    lines += ["## Calibration (temperature scaling)", "",
              "| held-out class | model | T | ECE val before → after | ECE unused known crops before → after |",
              "|---|---|---|---|---|"]
    for r in held:
        for precision, m in r["models"].items():
            lines.append(f"| {r['held_out']} | {precision} | {m['card_calibration']['temperature']:.3f} | "
                         f"{m['ece_val']['before']:.4f} → {m['ece_val']['after']:.4f} | "
                         f"{_ece(m.get('ece_unused'))} |")
    lines.append("")
    lines += ["## int8 vs fp32 OOD score (first 256 validation crops)", "",
              "| held-out class | median int8/fp32 | Spearman |", "|---|---|---|"]
    for r in held:
        s = r["int8_vs_fp32_score"]
        lines.append(f"| {r['held_out']} | {s['median_ratio']:.3f} | {s['spearman']:.4f} |")
    lines.append("")
    if bm:
        s = bm["summary"]
        lines += ["## bm_samples (44 Matek marrow crops, another lab)", "",
                  f"Model: `{bm['model_name']}` ({bm['model']}), threshold {bm['threshold']:.2f}, "
                  f"T {bm['temperature']:.3f}.", "",
                  f"- unseen classes (no PBC class; clean): {s['unseen_class_clean']['flagged_unknown']} of "
                  f"{s['unseen_class_clean']['n']} flagged `unknown`",
                  f"- seen classes (clean): {s['seen_class_clean']['flagged_unknown']} of "
                  f"{s['seen_class_clean']['n']} flagged `unknown`",
                  f"- garbled (manifest `known_bad_example`): {s['garbled']['flagged_unknown']} of "
                  f"{s['garbled']['n']} flagged `unknown`", ""]
        if bm.get("logit_scores"):
            lines += ["For comparison, at their own 5% validation thresholds: energy would flag "
                      f"{s['unseen_class_clean']['energy_flagged']}/{s['seen_class_clean']['energy_flagged']}/"
                      f"{s['garbled']['energy_flagged']}, max softmax {s['unseen_class_clean']['max_softmax_flagged']}/"
                      f"{s['seen_class_clean']['max_softmax_flagged']}/{s['garbled']['max_softmax_flagged']} "
                      "(unseen / seen / garbled).", ""]
        lines += ["| file | class | PBC has it | predicted | confidence | ood_score | qc_flags (engine) | energy flags |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in sorted(bm["crops"], key=lambda c: -c["ood_score"]):
            energy = {True: "yes", False: "no"}.get(c.get("energy_flagged"), "")
            lines.append(f"| {c['file']} | {c['class']}{' (garbled)' if c['garbled_in_manifest'] else ''} | "
                         f"{'yes' if c['seen_class'] else 'no'} | {c['predicted']} | {c['confidence']:.3f} | "
                         f"{c['ood_score']:.1f} | {';'.join(c['qc_flags'])} | {energy} |")
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "runs": runs}, indent=1) + "\n")
    print(f"wrote {out.with_suffix('.md')} and .json")


def _machine() -> str:
    from bmengine.engine.bench import machine_words

    return machine_words()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("make-data")
    p.add_argument("held_out")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--pbc", type=Path, default=PBC)
    p = sub.add_parser("evaluate")
    p.add_argument("run", type=Path)
    p.add_argument("--held-out", required=True)
    p.add_argument("--unused", type=int, default=1000)
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--int8-keep-fp32", action="append", default=[], metavar="FRAGMENT",
                   help="as bmengine export's: nodes left fp32 in the int8 model (e.g. /stages.3/)")
    p = sub.add_parser("bm-samples")
    p.add_argument("model", type=Path)
    p.add_argument("--work", type=Path, default=Path("/tmp/openset-bm"))
    p.add_argument("--run", type=Path, help="the model's training run (its split), for the energy/max-softmax comparison")
    p.add_argument("--json", type=Path, required=True)
    p = sub.add_parser("report")
    p.add_argument("jsons", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "open-set")
    p.add_argument("--commands", type=Path, help="a text file of the exact commands, copied into the record")
    p.add_argument("--notes", type=Path, help="Markdown (what the numbers say), put before the tables")
    args = parser.parse_args()
    if args.cmd == "make-data":
        print(make_data(args.held_out, args.out, args.pbc))
    elif args.cmd == "evaluate":
        result = evaluate(args.run, args.held_out, args.unused, int8_keep_fp32=tuple(args.int8_keep_fp32))
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    elif args.cmd == "bm-samples":
        args.json.write_text(json.dumps(bm_samples(args.model, args.work, run=args.run), indent=1) + "\n")
    else:
        report(args.jsons, args.out, args.commands.read_text() if args.commands else "",
               args.notes.read_text() if args.notes else "")


if __name__ == "__main__":
    main()
