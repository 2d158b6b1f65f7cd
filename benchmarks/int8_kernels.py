"""Does an int8 model's answer depend on the CPU? ONNX Runtime's three ways to run the same Q/DQ file.

- ``fast``: ONNX Runtime's default. On x86 without VNNI its uint8 x int8 kernels add each pair of
  products into a saturating int16 (VPMADDUBSW); with VNNI they do not.
- ``exact``: ``session.x64quantprecision=1``, what the engine's sessions use where the CPU shows
  no VNNI (engine/backends/x86_int8.py): uint8 x uint8 kernels that widen first.
- ``as-written``: ``session.disable_quant_qdq=1``: no fusion, every Q/DQ node run as written and the
  convolutions in float: the file's arithmetic without integer kernels (the reference).

Each is scored on the model's PBC validation split and on wbc_zheng (halves as in cross_lab.py), and
timed on one batch of 64 decoded crops through the backend's own batch splitting: ``--rounds`` rounds
in which the ways take turns, 3 timed runs each, and the median of all. The machine record says
whether the CPU has VNNI.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/int8_kernels.py --json out.json [MODEL]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cross_lab import DATA, SUBSETS, halves  # noqa: E402  (benchmarks/ is a folder of scripts)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "engine/assets/models/pbc_coatnet0_cs_int8.onnx"
#: way -> (the exact-int8 entry on or off, further session entries)
WAYS = {
    "fast": (False, {}),
    "exact": (True, {}),
    "as-written": (False, {"session.disable_quant_qdq": "1"}),
}


def with_session(backend, way: str):
    """The backend with its session rebuilt from the engine's own options, run ``way``."""
    import onnxruntime as ort

    from bmengine.engine.backends.onnxruntime_backend import _model_for_cpu, engine_session_options

    exact, entries = WAYS[way]
    so = engine_session_options(exact_int8=exact)
    for key, value in entries.items():
        so.add_session_config_entry(key, value)
    backend.session = ort.InferenceSession(_model_for_cpu(backend.model_path), so, providers=["CPUExecutionProvider"])
    return backend


def accuracy_rows(backend, classes: list[str]) -> dict:
    from bmengine.engine.cli.eval_cmd import _held_out
    from bmengine.engine.dataset import ImageFolder
    from bmengine.engine.evaluate import score_files
    from bmengine.engine.metrics import classification_report

    pbc = ImageFolder.scan(DATA / "pbc", tuple(classes))
    files, labels = _held_out(pbc, backend.card.training or {}, backend.model_path)
    probs, _, _ = score_files(backend, files)
    report = classification_report(np.asarray(labels), probs, classes)
    rows = {"pbc_val": {"n": len(files), "macro_f1": report["macro_f1"], "accuracy": report["accuracy"]}}
    for subset in SUBSETS:
        parts = halves(DATA, subset)
        items = parts["A"] + parts["B"]
        probs, _, _ = score_files(backend, [f for f, _ in items])
        right = np.array([classes[i] == c for i, (_, c) in zip(probs.argmax(1), items)])
        n_a = len(parts["A"])
        rows[subset] = {"accuracy": float(right.mean()), "A": float(right[:n_a].mean()), "B": float(right[n_a:].mean())}
    return rows


def throughputs(backends: dict, batch: np.ndarray, rounds: int) -> dict[str, float]:
    """img/s per way, the ways taking turns so that a busy moment of the machine hits them all."""
    seconds: dict[str, list[float]] = {way: [] for way in backends}
    for backend in backends.values():
        backend.forward(batch)  # warm-up
    for _ in range(rounds):
        for way, backend in backends.items():
            for _ in range(3):
                t0 = time.perf_counter()
                backend.forward(batch)
                seconds[way].append(time.perf_counter() - t0)
    return {way: len(batch) / statistics.median(s) for way, s in seconds.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", type=Path, default=SHIPPED)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ways", nargs="*", default=list(WAYS), choices=list(WAYS))
    args = parser.parse_args(argv)

    from bmengine.engine.backends import load_backend
    from bmengine.engine.backends.x86_int8 import EXACT_INT8_ON_X86
    from bmengine.engine.bench import machine_info
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    backends = {way: with_session(load_backend(args.model), way) for way in args.ways}
    backend = next(iter(backends.values()))
    classes = list(backend.card.classes)
    crops = sorted((DATA / "pbc").glob("*/*.jpg"))[::180][:64]
    batch, errors = CropPipeline(PipelineSpec.from_preprocessing(backend.card.preprocessing, batch_size=64)).decode_to_numpy(
        [f.read_bytes() for f in crops])
    assert not any(errors)
    record = {"model": str(args.model), "weights_sha256": backend.card.weights_sha256, "machine": machine_info(),
              "threads": backend.parts, "batch": len(batch), "timing": f"{args.rounds} rounds x 3 runs, ways in turn",
              "ways": {}}
    speed = throughputs(backends, batch, args.rounds)
    for way in args.ways:
        exact, entries = WAYS[way]
        row = {"session_entries": {**(dict([EXACT_INT8_ON_X86]) if exact else {}), **entries},
               "img_per_s": speed[way]}
        row.update(accuracy_rows(backends[way], classes))
        record["ways"][way] = row
        print(f"{way}: PBC macro-F1 {row['pbc_val']['macro_f1']:.4f}; cellavision_blog {row['cellavision_blog']['accuracy']:.3f} "
              f"(A {row['cellavision_blog']['A']:.3f} / B {row['cellavision_blog']['B']:.3f}); tecom "
              f"{row['tecom']['accuracy']:.3f} (A {row['tecom']['A']:.3f} / B {row['tecom']['B']:.3f}); "
              f"{row['img_per_s']:.1f} img/s", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
