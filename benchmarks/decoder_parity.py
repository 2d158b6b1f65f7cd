"""Do nvJPEG (GPU) and libjpeg-turbo (CPU) give the crop QC the same verdicts, damaged JPEGs included?

Usage (on a machine with a CUDA GPU):
    python benchmarks/decoder_parity.py [--per-kind 40] [--clean 1000] [--qc-size 144]
                                        [--json OUT.json] [--md OUT.md]

The damaged corpus is benchmarks/qc_corpus.py's (every kind of ``bmengine.engine.qc.damage``,
``--per-kind`` crops each, on the 'eval' half of PBC), plus ``--clean`` undamaged PBC crops of that
half and the 44 Matek crops. Every file is decoded twice by the engine's own DALI pipeline, as the
QC image (resized, uncropped, uint8): once on the CPU (libjpeg-turbo) and once on the GPU ("mixed":
nvJPEG, with libjpeg-turbo's chroma upsampling, engine/preprocess/dali_pipeline.py). The QC checks
then run on the host on both, so only the decoders differ (the GPU kernels' own parity is
tests/test_triton_kernels.py's).

Reported: which crops each decoder refuses; pixel differences; per check, the score differences
and the crops whose verdict differs at today's threshold; and the **re-derived threshold**: the
one nearest today's at which the two decoders agree on every crop of the corpus, with what each
decoder flags there. It writes a JSON record (``--json``). The thresholds live in engine/qc; a
change there is made from this record, by hand, with the corpus benchmark re-run.

Without a GPU it stops with the reason (exit 2): the CPU-only parts are tested in
tests/test_decoder_parity.py.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qc_corpus  # noqa: E402  (benchmarks/ is a folder of scripts, not a package)

from bmengine.engine.qc import QcStats, damage, quality_flags  # noqa: E402


@dataclass(frozen=True)
class Check:
    """One numeric QC check: its score from ``QcStats``, its threshold, and which side is flagged."""

    name: str
    score: Callable[[QcStats], np.ndarray]
    threshold: float
    above: bool  # True: flagged when score > threshold; False: when score < threshold


def numeric_checks() -> list[Check]:
    """Every QC check that reads pixels (the size checks read the file header: same for both)."""
    from bmengine.engine.qc.colour import MIN_CHROMA
    from bmengine.engine.qc.exposure import MAX_CLIPPED, MIN_BRIGHTNESS, MIN_CONTRAST
    from bmengine.engine.qc.garbled import GARBLED_THRESHOLDS

    checks = [Check(f"garbled.{name}", lambda s, n=name: s.garbled[n], limit, True)
              for name, limit in GARBLED_THRESHOLDS.items()]
    return checks + [
        Check("blank", lambda s: s.brightness_std, MIN_CONTRAST, False),
        Check("overexposed", lambda s: s.clipped_fraction, MAX_CLIPPED, True),
        Check("underexposed", lambda s: s.brightness_mean, MIN_BRIGHTNESS, False),
        Check("not_colour", lambda s: s.chroma, MIN_CHROMA, False),
    ]


def agreeing_threshold(a: np.ndarray, b: np.ndarray, threshold: float, above: bool = True) -> dict:
    """The threshold nearest ``threshold`` at which scores ``a`` (one decoder) and ``b`` (the other)
    give every crop the same verdict, and the crops that disagree at ``threshold`` itself.

    With "flagged when score > t", crop i disagrees at t when lo_i <= t < hi_i (its two scores).
    The disagreeing crops' intervals, grown by every interval that touches them, make one block
    around ``threshold``; every crop agrees just below the block's lowest score and at its highest
    (``candidates``), and ``nearest`` is the closer of the two. Flagging below a threshold is the
    same problem on negated scores.
    """
    sign = 1.0 if above else -1.0
    a, b, t = sign * np.asarray(a, np.float64), sign * np.asarray(b, np.float64), sign * float(threshold)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    disagree = np.flatnonzero((lo <= t) & (t < hi))
    if disagree.size == 0:
        return {"disagree": [], "nearest": float(threshold), "candidates": [float(threshold)]}
    block_lo, block_hi = lo[disagree].min(), hi[disagree].max()
    while True:
        touching = (lo <= block_hi) & (hi >= block_lo) & (hi > lo)
        grown = (min(block_lo, lo[touching].min()), max(block_hi, hi[touching].max()))
        if grown == (block_lo, block_hi):
            break
        block_lo, block_hi = grown
    ends = (float(np.nextafter(block_lo, -np.inf)), float(block_hi))
    nearest = min(ends, key=lambda v: abs(v - t))
    return {"disagree": disagree.tolist(), "nearest": sign * nearest, "candidates": sorted(sign * v for v in ends)}


def flagged(scores: np.ndarray, threshold: float, above: bool) -> int:
    return int((scores > threshold).sum() if above else (scores < threshold).sum())


@dataclass
class Decodes:
    images: list[np.ndarray | None]  # QC image per crop, None where it failed
    errors: list[str | None]
    shapes: list[tuple[int, int, int] | None]


def decode(blobs: list[bytes], qc_size: int, device: str, batch: int = 64, decoder_only: bool = False) -> Decodes:
    """Every crop's QC image through the engine's pipeline on ``device``: resized to ``qc_size``
    and not cropped (the QC image's own recipe), copied to the host. ``decoder_only``: without the
    engine's own refusals before decoding (JPEGs cut short), to see what each decoder does alone."""
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    class DecoderOnly(CropPipeline):
        def refusal(self, sample, header):
            return None

    pipeline = DecoderOnly if decoder_only else CropPipeline
    pipe = pipeline(PipelineSpec(qc_size, qc_size, (0.5,) * 3, (0.25,) * 3, normalize=False, device=device,
                                 batch_size=batch))
    out = Decodes([None] * len(blobs), [None] * len(blobs), [None] * len(blobs))
    for s in range(0, len(blobs), batch):
        decoded = pipe.decode(blobs[s : s + batch])
        if decoded.good:
            images = pipe.to_numpy(decoded.pixels)
            for j, i in enumerate(decoded.good):
                out.images[s + i], out.shapes[s + i] = images[j], decoded.shapes[j]
        out.errors[s : s + batch] = decoded.errors
    return out


def compare(cpu: Decodes, gpu: Decodes, checks: list[Check]) -> dict:
    """Decode agreement, pixel differences, per-check score differences and re-derived thresholds,
    and whole-verdict agreement (``quality_flags``) over the crops both decoders decoded."""
    both = [i for i in range(len(cpu.images)) if cpu.images[i] is not None and gpu.images[i] is not None]
    record: dict = {
        "n": len(cpu.images), "decoded_by_both": len(both),
        "only_cpu_decoded": [i for i in range(len(cpu.images)) if cpu.images[i] is not None and gpu.images[i] is None],
        "only_gpu_decoded": [i for i in range(len(cpu.images)) if gpu.images[i] is not None and cpu.images[i] is None],
    }
    if not both:
        return record
    a = np.stack([cpu.images[i] for i in both]).astype(np.int16)
    b = np.stack([gpu.images[i] for i in both]).astype(np.int16)
    diff = np.abs(a - b)
    record["pixels"] = {"mean_abs": round(float(diff.mean()), 4),
                        "p99_abs": float(np.percentile(diff, 99)), "max_abs": int(diff.max()),
                        "crops_max_abs_over_2": int((diff.reshape(len(both), -1).max(axis=1) > 2).sum())}
    stats_a, stats_b = QcStats.from_images(a.astype(np.uint8)), QcStats.from_images(b.astype(np.uint8))
    record["checks"] = {}
    for check in checks:
        sa, sb = np.asarray(check.score(stats_a), np.float64), np.asarray(check.score(stats_b), np.float64)
        derived = agreeing_threshold(sa, sb, check.threshold, check.above)
        record["checks"][check.name] = {
            "threshold": check.threshold, "flags": "above" if check.above else "below",
            "score_abs_diff": {"mean": round(float(np.abs(sa - sb).mean()), 5),
                               "p99": round(float(np.percentile(np.abs(sa - sb), 99)), 5),
                               "max": round(float(np.abs(sa - sb).max()), 5)},
            "disagree_at_threshold": [both[i] for i in derived["disagree"]],
            "agreeing_threshold": {"nearest": derived["nearest"], "candidates": derived["candidates"]},
            "flagged_cpu": flagged(sa, check.threshold, check.above),
            "flagged_gpu": flagged(sb, check.threshold, check.above),
            "flagged_at_nearest": {"cpu": flagged(sa, derived["nearest"], check.above),
                                   "gpu": flagged(sb, derived["nearest"], check.above)},
        }
    shapes = [cpu.shapes[i] for i in both]
    verdict_a = quality_flags(a.astype(np.uint8), shapes)
    verdict_b = quality_flags(b.astype(np.uint8), shapes)
    record["verdicts"] = {"agree": sum(x == y for x, y in zip(verdict_a, verdict_b)), "of": len(both),
                          "differ": {both[i]: [x, y] for i, (x, y) in enumerate(zip(verdict_a, verdict_b)) if x != y},
                          "flagged_cpu": sum(bool(x) for x in verdict_a), "flagged_gpu": sum(bool(y) for y in verdict_b)}
    return record


def caught(decodes: Decodes) -> list[bool]:
    """Per crop: refused (before or by the decoder) or flagged by the QC checks, as qc_corpus counts it."""
    good = [i for i, im in enumerate(decodes.images) if im is not None]
    flags = quality_flags(np.stack([decodes.images[i] for i in good]), [decodes.shapes[i] for i in good]) if good else []
    verdict = dict(zip(good, flags))
    return [decodes.errors[i] is not None or bool(verdict.get(i)) for i in range(len(decodes.images))]


def caught_by_kind(cpu: Decodes, gpu: Decodes, names: list[str]) -> dict[str, dict]:
    """Per damage kind (names are ``kind:source``): crops refused and caught by each decoder, and
    the crops caught by one decoder only: what a lab's QC numbers would differ by on a GPU."""
    caught_cpu, caught_gpu = caught(cpu), caught(gpu)
    kinds: dict[str, dict] = {}
    for i, name in enumerate(names):
        k = kinds.setdefault(name.split(":", 1)[0], {"n": 0, "refused_cpu": 0, "refused_gpu": 0, "caught_cpu": 0,
                                                     "caught_gpu": 0, "one_decoder_only": []})
        k["n"] += 1
        k["refused_cpu"] += cpu.errors[i] is not None
        k["refused_gpu"] += gpu.errors[i] is not None
        k["caught_cpu"] += caught_cpu[i]
        k["caught_gpu"] += caught_gpu[i]
        if caught_cpu[i] != caught_gpu[i]:
            k["one_decoder_only"].append(f"{name} ({'CPU' if caught_cpu[i] else 'GPU'} caught it)")
    return kinds


def corpus(data: Path, per_kind: int, n_clean: int, seed: int = 0) -> dict[str, tuple[list[bytes], list[str]]]:
    """Named sets of encoded crops: the damaged corpus, clean PBC crops, and Matek's 44."""
    files = qc_corpus.pbc_split(data, "eval")
    samples = qc_corpus.build_corpus(files, per_kind, seed)
    start = per_kind * len(damage.DAMAGE_KINDS)  # build_corpus used the files before this one
    clean = files[start : start + n_clean]
    rows = list(csv.DictReader(open(data / "bm_samples" / "manifest.csv")))
    return {
        "damaged": ([s.damaged for s in samples], [f"{s.kind}:{s.source}" for s in samples]),
        "pbc_clean": ([f.read_bytes() for f in clean], [f"{f.parent.name}/{f.name}" for f in clean]),
        "matek": ([(data / "bm_samples" / r["file"]).read_bytes() for r in rows], [r["file"] for r in rows]),
    }


def markdown(result: dict) -> str:
    lines = ["# nvJPEG vs libjpeg-turbo: the crop QC's verdicts", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']}; QC image {result['qc_size']} px; "
             f"DALI {result['dali']}; {result['seconds']:.0f} s.", ""]
    for name, r in result["sets"].items():
        lines += [f"## {name}: {r['n']} crops, {r['decoded_by_both']} decoded by both "
                  f"(only CPU: {len(r['only_cpu_decoded'])}, only GPU: {len(r['only_gpu_decoded'])})", ""]
        if "pixels" not in r:
            continue
        p, v = r["pixels"], r["verdicts"]
        lines += [f"Pixels: mean |d| {p['mean_abs']}, p99 {p['p99_abs']}, max {p['max_abs']} grey levels; "
                  f"verdicts agree on {v['agree']} of {v['of']} (flagged: CPU {v['flagged_cpu']}, GPU {v['flagged_gpu']}).",
                  "", "| check | threshold | max |d score| | p99 | disagree | flagged CPU/GPU | agreeing threshold |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for check, c in r["checks"].items():
            lines.append(f"| {check} | {c['flags']} {c['threshold']} | {c['score_abs_diff']['max']} | "
                         f"{c['score_abs_diff']['p99']} | {len(c['disagree_at_threshold'])} | "
                         f"{c['flagged_cpu']}/{c['flagged_gpu']} | {c['agreeing_threshold']['nearest']:.4g} |")
        lines.append("")
        if "caught_by_kind" in r:
            lines += ["Caught (refused or flagged) per damage kind, CPU / GPU:", "",
                      "| kind | crops | refused CPU/GPU | caught CPU/GPU | caught by one decoder only |",
                      "|---|---:|---:|---:|---|"]
            for kind, k in r["caught_by_kind"].items():
                lines.append(f"| {kind} | {k['n']} | {k['refused_cpu']}/{k['refused_gpu']} | "
                             f"{k['caught_cpu']}/{k['caught_gpu']} | {'; '.join(k['one_decoder_only']) or '-'} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=40)
    parser.add_argument("--clean", type=int, default=1000)
    parser.add_argument("--qc-size", type=int, default=144, help="the QC image's side (the engine's QC_SIZE: 144)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=qc_corpus.DATA)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--decoder-only", action="store_true",
                        help="skip the engine's own refusals before decoding (JPEGs cut short): each decoder alone")
    args = parser.parse_args(argv)

    from bmengine.engine.backends.devices import cuda_device_count

    if cuda_device_count() == 0:
        print("decoder_parity: needs a CUDA GPU (DALI 'mixed' decoding); none is visible here", file=sys.stderr)
        raise SystemExit(2)
    import nvidia.dali

    from bmengine.engine.bench import machine_words

    t0 = time.perf_counter()
    checks = numeric_checks()
    sets = {}
    for name, (blobs, names) in corpus(args.data, args.per_kind, args.clean, args.seed).items():
        cpu = decode(blobs, args.qc_size, "cpu", decoder_only=args.decoder_only)
        gpu = decode(blobs, args.qc_size, "gpu", decoder_only=args.decoder_only)
        record = compare(cpu, gpu, checks)
        if name == "damaged":
            record["caught_by_kind"] = caught_by_kind(cpu, gpu, names)
        record["names"] = names
        sets[name] = record
    result = {"command": "python benchmarks/decoder_parity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_words(), "dali": nvidia.dali.__version__, "qc_size": args.qc_size,
              "decoder_only": args.decoder_only,
              "sets": sets, "seconds": time.perf_counter() - t0}
    text = markdown(result)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.md:
        args.md.write_text(text)
    return result


if __name__ == "__main__":
    main()
