"""Pack what a lent GPU machine with no network needs to run the GPU tests and benchmarks.

The lent machine has CUDA, torch and Triton but not DALI or the engine's other dependencies, reaches
no package index, and takes at most 64 MiB per call (the checkout and the carried folders together).
This builds, under ``.gpucarry/`` (ignored by git, as is ``.gpushared/``, made there):
- ``p1``, ``p2``, ``p3``: the dependencies installed for CPython 3.12 (``pip install --target``),
  packed as one ``tar.xz`` (551 MB of files -> 158 MB) and split into parts of ``--part-mb``;
- ``p4/data.tgz``: the PBC crops the tests read (and, with ``--parity-clean``, those of
  benchmarks/decoder_parity.py), with empty files standing in for the rest, so that sorted listings
  and the fixed PBC splits are the same as here;
- ``p4/setup.sh``: run there first; joins the parts (moved to /tmp/parts by the earlier calls),
  unpacks them into the interpreter's site-packages, links ``../shared`` and makes ``bmengine.*``
  importable.

Then, per the device tool's notes: untrack the large files for the session (the shipped models
and sample-slide chunks: ``git rm --cached`` and the same paths in .git/info/exclude; ``git reset``
them afterwards, committing nothing in between), carry each part in its own call, moving it to
/tmp/parts there at once (a carried folder is replaced on the next call), and with the last one run
``bash .gpucarry/p4/setup.sh && export PYTHONPATH=/tmp/pkg`` before the tests. The first run, on
an H100: benchmarks/results/2026-11-26-h100-gpu-path.md.

Usage: python benchmarks/gpu_carry.py [--part-mb 57] [--real-per-class 110] [--parity-clean 300]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # qc_corpus: benchmarks/ is a folder of scripts
DATA = REPO.parent / "shared" / "data"
OUT = REPO / ".gpucarry"
#: the engine's dependencies missing from the lent machine's image, pinned as this checkout uses them
#: (nvidia-libnvcomp-cu13 is left out: DALI loads it only for its decompression operators)
WHEELS = ("nvidia-dali-cuda130==2.4.0", "nvidia-nvimgcodec-cu13==0.9.0.20", "nvidia-nvjpeg==13.3.2.43",
          "nvidia-nvjpeg2k-cu13==0.11.0.51", "astunparse==1.6.3", "gast==0.7.0", "optree==0.20.0", "libcst",
          "makefun", "nvtx", "zarr==3.1.6", "numcodecs==0.16.6", "donfig==0.8.1.post1", "google-crc32c==1.9.0",
          "dask==2026.8.0", "distributed==2026.8.0", "partd==1.4.2", "locket==1.0.0", "tblib==3.2.2",
          "zict==3.0.0", "tornado==6.6.1")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64", "any")
SETUP = """#!/bin/bash
set -eu
site=$(python3 -c "import site; print(site.getsitepackages()[0])")
cat /tmp/parts/site.part-* | xz -dc -T0 | tar x -C "$site" --no-same-owner
mkdir -p .gpushared /tmp/pkg/bmengine && tar xzf {here}/data.tgz -C .gpushared && ln -sfn "$PWD/.gpushared" ../shared
for p in engine training kernels; do ln -sfn "$PWD/$p" /tmp/pkg/bmengine/$p; done
"""


def site_tarball(work: Path) -> Path:
    """The wheels installed for CPython 3.12 into one folder, packed as tar.xz."""
    site = work / "site"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "--target", str(site)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + list(WHEELS), check=True)
    for other in site.rglob("*.cpython-3*"):  # extensions built for other Pythons: 70 MB
        if ".cpython-312" not in other.name:
            other.unlink()
    packed = work / "site.tar.xz"
    subprocess.run(f"tar cf - -C {site} . | xz -T0 -8 > {packed}", shell=True, check=True)
    return packed


def parity_files(per_kind: int, clean: int) -> set[Path]:
    """The PBC crops ``decoder_parity.py --per-kind K --clean N`` reads (its damaged corpus, donors
    and clean crops, all from the eval half)."""
    import qc_corpus
    from bmengine.engine.qc import damage

    files = qc_corpus.pbc_split(DATA, "eval")
    return set(files[: per_kind * len(damage.DAMAGE_KINDS) + clean]) | set(files[-50:])


def data_tarball(work: Path, real_per_class: int, also_real: set[Path]) -> Path:
    """PBC with the first ``real_per_class`` crops of each class and ``also_real`` real, the rest
    empty; and Matek's 44."""
    root = work / "data"
    for folder in sorted(p for p in (DATA / "pbc").iterdir() if p.is_dir()):
        target = root / "pbc" / folder.name
        target.mkdir(parents=True)
        for i, crop in enumerate(sorted(folder.glob("*.jpg"))):
            if i < real_per_class or crop in also_real:
                shutil.copyfile(crop, target / crop.name)
            else:
                (target / crop.name).touch()
    shutil.copytree(DATA / "bm_samples", root / "bm_samples")
    packed = work / "data.tgz"
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(root, arcname="data")
    return packed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part-mb", type=int, default=57, help="size of each part (the checkout travels too)")
    parser.add_argument("--real-per-class", type=int, default=110)
    parser.add_argument("--parity-clean", type=int, default=0,
                        help="also the crops of `decoder_parity.py --clean N` (default 40 per damage kind)")
    args = parser.parse_args(argv)
    also_real = parity_files(40, args.parity_clean) if args.parity_clean else set()
    shutil.rmtree(OUT, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        packed = site_tarball(work).read_bytes()
        size = args.part_mb * 1_000_000
        parts = [packed[i:i + size] for i in range(0, len(packed), size)]
        for n, part in enumerate(parts, start=1):
            (OUT / f"p{n}").mkdir(parents=True)
            (OUT / f"p{n}" / f"site.part-{n:02d}").write_bytes(part)
        last = OUT / f"p{len(parts) + 1}"
        last.mkdir()
        shutil.copy(data_tarball(work, args.real_per_class, also_real), last / "data.tgz")
        (last / "setup.sh").write_text(SETUP.format(here=f".gpucarry/{last.name}"))
    for folder in sorted(OUT.iterdir()):
        mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
        print(f"{folder.relative_to(REPO)}: {mb:.0f} MB")


if __name__ == "__main__":
    main()
