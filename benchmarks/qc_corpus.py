"""How many damaged JPEGs does the engine's crop QC catch, and how many clean crops does it flag?

Usage: python benchmarks/qc_corpus.py [--per-kind 80] [--clean 2000] [--resize 144] [--split eval]
                                      [--other-sizes 72,128,224] [--json OUT.json] [--md OUT.md]
                                      [--keep DIR]

Builds a corpus of damaged crops from real PBC JPEGs (``bmengine.engine.qc.damage``: every kind
of damage, ``--per-kind`` crops each, seeded), writes it to a temporary folder, decodes every file
through the engine's own DALI CPU pipeline and runs ``quality_flags`` on what the engine gives it
(``Decoded.qc``, the resized uncropped image, and ``Decoded.shapes``, from each file's header).
Counted per kind: errored (refused by the pipeline: the engine already makes an error row),
flagged, missed. Damage that leaves the picture (nearly) as it was is not counted: see ``INVISIBLE``.
Clean crops are scored the same way: PBC crops never damaged nor used to tune the thresholds, the
36 clean Matek crops, and both wbc_zheng subsets (other labs, other sizes); the 8 garbled Matek
crops must be flagged.

PBC is split in two halves by a fixed seed: ``--split tune`` (the half the thresholds were tuned
on) and ``--split eval`` (the default, the half reported).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bmengine.engine.qc import damage, garbled_flags, quality_flags

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SPLIT_SEED = 20261126
INVISIBLE = (0.01, 24)
"""Damage is excluded as invisible when fewer than 1% of the QC image's pixels changed by more
than 24 grey levels (in any channel) against the clean decode: no one could see it, no check
should be asked to."""


@dataclass
class Sample:
    kind: str
    source: str
    damaged: bytes
    reference: bytes


def pbc_split(data: Path, split: str) -> list[Path]:
    """One half of PBC in a fixed shuffled order: the 'tune' half or the 'eval' half."""
    files = sorted((data / "pbc").glob("*/*.jpg"))
    order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    half = len(files) // 2
    chosen = order[:half] if split == "tune" else order[half:]
    return [files[i] for i in chosen]


def build_corpus(files: list[Path], per_kind: int, seed: int = 0) -> list[Sample]:
    """``per_kind`` damaged crops of every kind, each from a different PBC crop (the first files)."""
    rng = np.random.default_rng(seed)
    donors = [f.read_bytes() for f in files[-50:]]  # the other crops spliced in by foreign_band
    samples = []
    for k, kind in enumerate(damage.DAMAGE_KINDS):
        for f in files[k * per_kind : (k + 1) * per_kind]:
            data = f.read_bytes()
            other = donors[int(rng.integers(len(donors)))]
            samples.append(Sample(kind, f"{f.parent.name}/{f.name}", damage.DAMAGE_KINDS[kind](data, rng, other),
                                  damage.reference(kind, data)))
    return samples


Decodes = tuple[list[np.ndarray | None], list[str | None], list[tuple[int, int, int] | None]]


def decode(blobs: list[bytes], resize: int, batch: int = 64) -> Decodes:
    """Through the engine's DALI CPU pipeline: every crop's QC image and header shape (None where
    it failed) and its error (None where it decoded)."""
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    pipe = CropPipeline(PipelineSpec(resize, resize, (0.5,) * 3, (0.25,) * 3, batch_size=batch, qc_output=True, qc_size=resize))
    images: list[np.ndarray | None] = [None] * len(blobs)
    shapes: list[tuple[int, int, int] | None] = [None] * len(blobs)
    errors: list[str | None] = [None] * len(blobs)
    for s in range(0, len(blobs), batch):
        out = pipe.decode(blobs[s : s + batch])
        for j, i in enumerate(out.good):
            images[s + i], shapes[s + i] = out.qc[j], out.shapes[j]
        errors[s : s + batch] = out.errors
    return images, errors, shapes


def flags_of(images: list[np.ndarray | None], shapes: list[tuple[int, int, int] | None],
             row_seam_alone: bool = False) -> list[str | None]:
    """quality_flags of every decoded crop (None where it failed to decode), in one call; or, for
    comparison, the row-seam check alone (``garbled_flags``, all the engine had before)."""
    good = [i for i, im in enumerate(images) if im is not None]
    out: list[str | None] = [None] * len(images)
    if good:
        batch = np.stack([images[i] for i in good])
        flags = garbled_flags(batch) if row_seam_alone else quality_flags(batch, [shapes[i] for i in good])
        for i, f in zip(good, flags):
            out[i] = f
    return out


def changed_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels that moved by more than ``INVISIBLE[1]`` grey levels in any channel."""
    return float((np.abs(a.astype(np.int16) - b).max(axis=-1) > INVISIBLE[1]).mean())


def corpus_rows(samples: list[Sample], resize: int, keep: Path | None) -> list[dict]:
    """Write the corpus to a folder, decode it back, and score every damaged crop."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep or Path(tmp)
        paths = []
        for i, s in enumerate(samples):
            path = folder / s.kind / f"{i:05d}_{s.source.replace('/', '_')}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(s.damaged)
            paths.append(path)
        blobs = [p.read_bytes() for p in paths]
    images, errors, shapes = decode(blobs, resize)
    refs, _, _ = decode([s.reference for s in samples], resize)
    flags = flags_of(images, shapes)
    before = flags_of(images, shapes, row_seam_alone=True)
    rows = []
    for s, im, ref, err, flag, old in zip(samples, images, refs, errors, flags, before):
        changed = 1.0 if im is None else changed_fraction(im, ref)
        rows.append({"kind": s.kind, "source": s.source, "error": err, "flags": flag, "row_seam_alone": old,
                     "changed": changed})
    return rows


def per_kind(rows: list[dict]) -> dict[str, dict]:
    """n, invisible, errored, flagged, missed per kind of damage (and over all kinds)."""
    table = {}
    for kind in [*damage.DAMAGE_KINDS, "all"]:
        rs = [r for r in rows if kind in ("all", r["kind"])]
        visible = [r for r in rs if r["changed"] >= INVISIBLE[0]]
        errored = sum(r["error"] is not None for r in visible)
        flagged = sum(r["error"] is None and bool(r["flags"]) for r in visible)
        caught = errored + flagged
        before = errored + sum(r["error"] is None and bool(r["row_seam_alone"]) for r in visible)
        table[kind] = {"n": len(rs), "invisible": len(rs) - len(visible), "visible": len(visible),
                       "errored": errored, "flagged": flagged, "missed": len(visible) - caught,
                       "caught_pct": round(100 * caught / max(len(visible), 1), 1),
                       "row_seam_alone_caught_pct": round(100 * before / max(len(visible), 1), 1)}
    return table


def clean_sets(data: Path, files: list[Path], n_clean: int) -> dict[str, tuple[list[bytes], list[str]]]:
    """Clean crops by set: PBC (never damaged, never tuned on), Matek, and the two wbc_zheng labs."""
    rows = list(csv.DictReader(open(data / "bm_samples" / "manifest.csv")))
    bm = {r["file"]: (data / "bm_samples" / r["file"]).read_bytes() for r in rows}
    bad = [r["file"] for r in rows if r["listed_as"] == "known_bad_example"]
    zheng = {sub: sorted((data / "wbc_zheng" / sub).glob("[!_]*/*.png")) for sub in ("tecom", "cellavision_blog")}
    return {
        "pbc_clean": ([f.read_bytes() for f in files], [f"{f.parent.name}/{f.name}" for f in files]),
        "matek_clean": ([b for k, b in bm.items() if k not in bad], [k for k in bm if k not in bad]),
        "matek_known_bad": ([bm[k] for k in bad], bad),
        **{f"zheng_{sub}": ([f.read_bytes() for f in fs], [f.name for f in fs]) for sub, fs in zheng.items()},
    }


def clean_rows(sets: dict[str, tuple[list[bytes], list[str]]], resize: int) -> dict[str, dict]:
    """Per set: n, flagged (and by which flags), errored."""
    out = {}
    for name, (blobs, names) in sets.items():
        images, errors, shapes = decode(blobs, resize)
        flags = flags_of(images, shapes)
        flagged = {n: f for n, f in zip(names, flags) if f}
        before = sum(bool(f) for f in flags_of(images, shapes, row_seam_alone=True))
        out[name] = {"n": len(blobs), "errored": sum(e is not None for e in errors), "flagged": len(flagged),
                     "flagged_pct": round(100 * len(flagged) / len(blobs), 2), "which": flagged,
                     "row_seam_alone_flagged_pct": round(100 * before / len(blobs), 2)}
    return out


def cost_per_crop(files: list[Path], resize: int, repeats: int = 9) -> dict[str, float]:
    """Median microseconds per crop of quality_flags on a batch of 64 real decoded crops: CPU time
    of this process (what the check costs) and wall time (what it took, other jobs included)."""
    blobs = [f.read_bytes() for f in files[:64]]
    images, _, shapes = decode(blobs, resize)
    batch = np.stack(images)
    quality_flags(batch, shapes)  # warm-up
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        quality_flags(batch, shapes)
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return {name: round(1e6 * float(np.median(t)) / len(blobs), 1) for name, t in (("cpu", cpu), ("wall", wall))}


def markdown(result: dict) -> str:
    lines = [
        "# Crop QC on a corpus of damaged JPEGs",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; QC image {result['resize']} px (DALI CPU pipeline, the engine's own); "
        f"PBC half `{result['split']}`; {result['seconds']:.0f} s.",
        "",
        "Damage (``bmengine.engine.qc.damage``), each kind on different PBC crops. "
        f"Invisible = fewer than {INVISIBLE[0]:.0%} of the QC image's pixels moved by more than "
        f"{INVISIBLE[1]} grey levels: excluded. Caught = errored (DALI refused it: an error row) + flagged.",
        "",
        "| damage | n | invisible | visible | errored | flagged | missed | caught | row seam alone (before) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, r in result["corpus"].items():
        lines.append(f"| {kind} | {r['n']} | {r['invisible']} | {r['visible']} | {r['errored']} | {r['flagged']} "
                     f"| {r['missed']} | {r['caught_pct']}% | {r['row_seam_alone_caught_pct']}% |")
    lines += ["", "Real crops: the 8 garbled Matek crops should be flagged, the other sets are undamaged files "
              "(but see the notes on wbc_zheng below).", "",
              "| set | n | errored | flagged | flagged % | flags | row seam alone (before) |",
              "|---|---:|---:|---:|---:|---|---:|"]
    for name, r in result["clean"].items():
        which = ", ".join(sorted(set(";".join(r["which"].values()).split(";")) - {""}))
        lines.append(f"| {name} | {r['n']} | {r['errored']} | {r['flagged']} | {r['flagged_pct']}% | {which} "
                     f"| {r['row_seam_alone_flagged_pct']}% |")
    lines += ["", "Flagged crops of the undamaged sets:", ""]
    for name, r in result["clean"].items():
        if r["which"] and name != "matek_known_bad":
            lines.append(f"- {name}: " + ", ".join(f"{n} ({f})" for n, f in sorted(r["which"].items())))
    if result["other_sizes"]:
        names = list(result["clean"])
        lines += ["", "Other QC image sizes (the engine makes the QC image at the model's resize), % of each set:", "",
                  "| QC px | damaged caught | " + " | ".join(f"{n} flagged" for n in names) + " |",
                  "|---:|---:|" + "---:|" * len(names)]
        for size, r in result["other_sizes"].items():
            lines.append(f"| {size} | {r['caught_pct']}% | " + " | ".join(f"{r[n]}%" for n in names) + " |")
    cost = result["us_per_crop"]
    lines += ["", f"`quality_flags` cost: about {cost['cpu']:.0f} us of CPU per crop ({cost['wall']:.0f} us wall), "
              "batch of 64 at this QC size, median of 9; other jobs shared the machine, so approximate.", ""]
    return "\n".join(lines)


def summary(corpus: dict[str, dict], clean: dict[str, dict]) -> dict:
    """One line per QC size: damaged crops caught, and each real set's flagged share."""
    return {"caught_pct": corpus["all"]["caught_pct"], **{name: r["flagged_pct"] for name, r in clean.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=80)
    parser.add_argument("--clean", type=int, default=2000)
    parser.add_argument("--resize", type=int, default=144, help="QC image size (the default model's resize: 144)")
    parser.add_argument("--other-sizes", default="", help="comma-separated QC sizes to summarise too, e.g. 72,128,224")
    parser.add_argument("--split", choices=("tune", "eval"), default="eval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--keep", type=Path, help="keep the damaged files in this folder")
    args = parser.parse_args(argv)

    from bmengine.engine.bench import machine_words

    t0 = time.perf_counter()
    files = pbc_split(args.data, args.split)
    n_damaged = args.per_kind * len(damage.DAMAGE_KINDS)
    samples = build_corpus(files, args.per_kind, args.seed)
    sets = clean_sets(args.data, files[n_damaged : n_damaged + args.clean], args.clean)
    rows = corpus_rows(samples, args.resize, args.keep)
    clean = clean_rows(sets, args.resize)
    sizes = {}
    for size in [int(v) for v in args.other_sizes.split(",") if v]:
        sizes[size] = summary(per_kind(corpus_rows(samples, size, None)), clean_rows(sets, size))
    result = {
        "command": "python benchmarks/qc_corpus.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_words(), "resize": args.resize, "split": args.split, "seed": args.seed,
        "invisible_rule": {"min_changed_fraction": INVISIBLE[0], "grey_levels": INVISIBLE[1]},
        "corpus": per_kind(rows), "clean": clean, "other_sizes": sizes,
        "us_per_crop": cost_per_crop(files[n_damaged:], args.resize),
        "missed": [r for r in rows if r["changed"] >= INVISIBLE[0] and r["error"] is None and not r["flags"]],
    }
    result["seconds"] = time.perf_counter() - t0
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        args.md.write_text(text)
    return result


if __name__ == "__main__":
    main()
