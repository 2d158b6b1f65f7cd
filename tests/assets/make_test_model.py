"""Re-make the suite's small test model: ``python tests/assets/make_test_model.py`` (needs [train]).

The engine's tests must run without PyTorch, so they use a model trained and exported once and
committed here (``tiny.onnx``, ``tiny_int8.onnx`` and their cards) instead of one trained in
every session. It is a real model, not a three-step one: a near-uniform model cannot tell a
scrambled batch or a swapped class column from a correct one.

Data: a documented subset of PBC, ``TRAIN_SUBSET`` below: for every class, the crops at positions
``FIRST``..``FIRST + PER_CLASS - 1`` of its sorted file list. The tests draw their crops from
positions below ``FIRST`` (``conftest.pbc_files``), so the model never saw them. Within the subset
`bmengine train` holds out a stratified 20% (seed 0, recorded in the card); `bmengine eval
--held-out` on the same subset scores exactly that split. ``tiny_split.csv`` lists both parts.

It is exported without the OOD head and temperature (``--no-ood --no-calibrate``): the suite's
counts are about the engine, and its OOD tests train their own model. ``--export-only`` re-exports
the last run's checkpoint (same weights) after an export change.

Takes about two minutes on 2 CPU cores (64 px, MultiScaleCrossAttentionNet, 1.5M parameters).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIRST, PER_CLASS = 200, 300  # sorted positions [200, 500) of every class; tests use [0, 200)
TRAIN_COMMAND = ["--backbone", "multiscale_cross_attention", "--attention", "none", "--loss", "cost_sensitive",
                 "--epochs", "20", "--batch-size", "64", "--lr", "2e-3", "--resize", "72", "--crop", "64",
                 "--seed", "0", "--val-fraction", "0.2"]
MODEL_FILES = ("tiny.onnx", "tiny.onnx.card.json", "tiny_int8.onnx", "tiny_int8.onnx.card.json")


def subset_files(pbc: Path) -> dict[str, list[Path]]:
    """The training subset: the same crops on every machine that has ../shared/data/pbc."""
    subset = {}
    for folder in sorted(p for p in pbc.iterdir() if p.is_dir()):
        files = sorted(folder.glob("*.jpg"))[FIRST : FIRST + PER_CLASS]
        if len(files) != PER_CLASS:
            raise SystemExit(f"{folder}: fewer than {FIRST + PER_CLASS} crops")
        subset[folder.name] = files
    return subset


def build_subset(pbc: Path, target: Path) -> Path:
    """A class-per-folder tree of symbolic links to the subset (nothing copied)."""
    shutil.rmtree(target, ignore_errors=True)
    for cls, files in subset_files(pbc).items():
        (target / cls).mkdir(parents=True)
        for f in files:
            (target / cls / f.name).symlink_to(f.resolve())
    return target


def write_split(run: Path, out: Path) -> None:
    """``tiny_split.csv``: class/name of every subset crop and whether it was trained on."""
    split = json.loads((run / "split.json").read_text())
    rows = [(str(Path(*Path(f).parts[-2:])), part) for part in ("train", "val") for f in split[part]]
    with open(out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "split"])
        writer.writerows(sorted(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbc", type=Path, default=REPO.parent / "shared" / "data" / "pbc")
    parser.add_argument("--work", type=Path, default=Path("runs/test-model"), help="scratch folder (relative to the repo)")
    parser.add_argument("--export-only", action="store_true", help="re-export the existing run's checkpoint")
    args = parser.parse_args()
    bmengine = str(Path(sys.executable).with_name("bmengine"))  # the card records `bmengine train ...`
    data, run = args.work / "data", args.work / "run"
    if not args.export_only:
        build_subset(args.pbc, REPO / data)
        shutil.rmtree(REPO / run, ignore_errors=True)
        subprocess.run([bmengine, "train", str(data), "--out", str(run), *TRAIN_COMMAND], check=True, cwd=REPO)
    export = run / "export" / "tiny.onnx"
    subprocess.run([bmengine, "export", str(run / "checkpoints" / "last.pt"), "--out", str(export),
                    "--name", "pbc-msca64-test", "--no-ood", "--no-calibrate"], check=True, cwd=REPO)
    for name in MODEL_FILES:
        shutil.copy(REPO / export.parent / name, HERE / name)
    write_split(REPO / run, HERE / "tiny_split.csv")


if __name__ == "__main__":
    main()
