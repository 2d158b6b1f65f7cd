"""Full-size training arms side by side on a lent GPU machine that reaches no network.

The machine has torch, CUDA and 16 cores but no DALI, and a call carries at most 64 MiB; PBC is
213 MB of JPEGs. So the training images travel already decoded by the engine's DALI pipeline at
the training size (144 px: what ``cached_images`` would make there) and re-encoded as JPEG quality
90 without chroma subsampling (80 MiB, mean |d| 1.6 grey levels against the DALI decode; say so
with any number this produces). wbc_zheng travels decoded at 144 px losslessly (xz), so its scores
are the engine's preprocessing.

    pack   (here)   .gputrain/p1 and p2: the PBC images in two parts, wbc_zheng, timm's wheel, a manifest
    setup  (there)  joins the parts, writes the trainer's image cache, empty files standing in for PBC
    arms   (there)  trains the arms in parallel (``bmengine train``'s trainer, --device cuda), stops the
                    lowest-priority arms when the rest would overrun --budget-s, scores every arm on PBC
                    validation and both wbc_zheng halves, and splits one arm's weights into parts
                    small enough to come back

Each arm is the shipped default's recipe (``make default-model``: 10 epochs cross-lab on half of
each batch, then 4 epochs from those weights with it on a quarter), with one thing changed.
``join`` (here) puts a returned arm back together as a trainer checkpoint that ``bmengine export``
takes.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
PACK = REPO / ".gputrain"
RESIZE, CROP, QUALITY = 144, 128, 90
PART_BYTES = 15 * 2**20  # what comes back: at most 16 MiB per file


@dataclass
class Arm:
    """One arm: a name, its priority (lower stops first), and what differs from the shipped recipe."""

    name: str
    priority: int
    base: dict = field(default_factory=dict)
    seed: int = 0


#: the shipped default's two stages (Makefile ``default-model``)
BASE_STAGE = dict(backbone="coatnet_0", attention="none", loss="cost_sensitive", epochs=10, batch_size=64, lr=2e-3,
                  resize=RESIZE, crop=CROP, augment="cross-lab", augment_options={"colour_p": 0.5, "zoom_p": 0.5})
MIXED_STAGE = dict(epochs=4, lr=5e-4, warmup_epochs=0.0, augment_options={"colour_p": 0.25, "zoom_p": 0.25})

ARMS = {arm.name: arm for arm in (
    Arm("bn-seed0", 5),
    Arm("gn-seed0", 4, base={"backbone": "coatnet_0_gn"}),
    Arm("bn-seed1", 3, seed=1),
    Arm("gn-seed1", 2, base={"backbone": "coatnet_0_gn"}, seed=1),
    Arm("bn-seed2", 1, seed=2),
)}


# ---------------------------------------------------------------- here
def _pbc_data_dir() -> Path:
    """PBC as ``make default-model`` names it, relative to the checkout: the trainer keys its image
    cache by the paths as listed, so the same relative path finds the same cache here and there."""
    return Path(os.path.relpath(DATA / "pbc", REPO))


def _pbc_files() -> list[Path]:
    from bmengine.engine.taxonomy import get_taxonomy
    from bmengine.training.trainer import drawn_split

    dataset, _, _ = drawn_split(_pbc_data_dir(), get_taxonomy("pbc-blood-8").classes, None, 0.2, 0)
    return [Path(f) for f in dataset.files]


def pack() -> None:
    """Build .gputrain/p1, p2 (one carried call each)."""
    from PIL import Image

    sys.path.insert(0, str(REPO / "benchmarks"))
    import cross_lab
    from bmengine.training.image_cache import cached_images

    files = _pbc_files()
    images = cached_images(files, RESIZE, REPO / "runs" / "detail-base" / "cache" / "images")
    blobs, errors = [], []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(image)).save(buffer, "JPEG", quality=QUALITY, subsampling=0)
        blobs.append(buffer.getvalue())
        errors.append(np.abs(np.asarray(Image.open(buffer), dtype=np.int16) - image).mean())
    wbc_rows, wbc_files = [], []
    for subset in cross_lab.SUBSETS:
        for half, rows in cross_lab.halves(DATA, subset).items():
            for path, cls in rows:
                wbc_rows.append({"subset": subset, "half": half, "class": cls, "file": path.name})
                wbc_files.append(path)
    wbc = cached_images(wbc_files, RESIZE, None)
    PACK.mkdir(exist_ok=True)
    for old in PACK.glob("p*/*"):
        old.unlink()
    cut = len(blobs) // 2
    for n, chunk in ((1, blobs[:cut]), (2, blobs[cut:])):
        (PACK / f"p{n}").mkdir(exist_ok=True)
        (PACK / f"p{n}" / f"pbc-{n}.bin").write_bytes(b"".join(chunk))
    manifest = {"pbc": [os.path.relpath(f, _pbc_data_dir()) for f in files], "pbc_sizes": [len(b) for b in blobs],
                "pbc_reencode_mean_abs": float(np.mean(errors)), "wbc": wbc_rows, "resize": RESIZE}
    (PACK / "p2" / "manifest.json").write_text(json.dumps(manifest))
    (PACK / "p2" / "wbc.npy.xz").write_bytes(lzma.compress(_npy_bytes(wbc), preset=6))
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "timm==1.0.31", "-d", str(PACK / "p2")],
                   check=True)
    for folder in sorted(PACK.glob("p*")):
        print(f"{folder.relative_to(REPO)}: {sum(f.stat().st_size for f in folder.iterdir()) / 2**20:.1f} MiB")
    print(f"PBC re-encoded at quality {QUALITY} 4:4:4: mean |d| {np.mean(errors):.2f} grey levels")


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array))
    return buffer.getvalue()


def join(parts: list[Path], out: Path) -> None:
    """The returned arm's parts -> a trainer checkpoint (float32 weights) at ``out``."""
    import torch

    blob = b"".join(p.read_bytes() for p in sorted(parts))
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    state["model"] = {k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()}
    state["data_note"] = (f"trained on a lent GPU by benchmarks/gpu_training.py: the {state['config']['data_dir']} "
                          f"images decoded by the engine's DALI pipeline at {RESIZE} px and carried re-encoded as JPEG "
                          f"quality {QUALITY} 4:4:4 (mean |d| 1.6 grey levels); weights carried in half precision")
    if "started_from" not in state and state["config"].get("init_from"):  # runs from before the trainer kept it
        arm = next(a for a in ARMS.values() if f"/{a.name}/base/" in state["config"]["init_from"])
        base = {**BASE_STAGE, **arm.base}
        state["started_from"] = {
            "checkpoint": state["config"]["init_from"], "epochs": base["epochs"], "lr": base["lr"], "init_from": None,
            "command": f"python benchmarks/gpu_training.py train-arm {arm.name} (its base stage)",
            "augmentation": {"preset": base["augment"], "options": base["augment_options"]},
            "note": "left on the lent GPU machine; this record is the arm's recipe in benchmarks/gpu_training.py"}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    print(f"{out}: {state['config']['backbone']} seed {state['config']['seed']}, epoch {state['epoch']}")


# ---------------------------------------------------------------- there
def setup(cache_dir: Path) -> None:
    """The trainer's 144 px cache from the carried JPEGs, and empty files standing in for PBC's."""
    from PIL import Image

    from bmengine.training.image_cache import cache_file

    manifest = json.loads((PACK / "p2" / "manifest.json").read_text())
    blob = Path("/tmp/parts/pbc-1.bin").read_bytes() + (PACK / "p2" / "pbc-2.bin").read_bytes()
    files = [_pbc_data_dir() / name for name in manifest["pbc"]]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    images = np.empty((len(files), RESIZE, RESIZE, 3), dtype=np.uint8)
    offset = 0
    for i, size in enumerate(manifest["pbc_sizes"]):
        images[i] = np.asarray(Image.open(io.BytesIO(blob[offset : offset + size])).convert("RGB"))
        offset += size
    target = cache_file(files, RESIZE, cache_dir / "images")
    target.parent.mkdir(parents=True, exist_ok=True)
    np.save(target, images)
    np.save(cache_dir / "wbc.npy", np.load(io.BytesIO(lzma.decompress((PACK / "p2" / "wbc.npy.xz").read_bytes()))))
    print(f"{len(files)} PBC images cached at {target}")


def _stage_config(arm: Arm, stage: str, runs: Path, cache_dir: Path, threads: int, device: str,
                  max_steps: int | None):
    from bmengine.training.trainer import TrainConfig

    values = {**BASE_STAGE, **arm.base}
    if stage == "mixed":
        values.update(MIXED_STAGE, init_from=str(runs / arm.name / "base" / "checkpoints" / "last.pt"))
    if max_steps:  # a smoke run: one epoch per stage
        values["epochs"] = 1
    return TrainConfig(data_dir=str(_pbc_data_dir()), run_dir=str(runs / arm.name / stage),
                       seed=arm.seed, cache_dir=str(cache_dir), device=device, threads=threads,
                       max_steps_per_epoch=max_steps, **values)


def train_arm(name: str, runs: Path, cache_dir: Path, threads: int, device: str, max_steps: int | None) -> None:
    """Both stages of one arm, in this process (``arms`` starts one per arm)."""
    from bmengine.training.trainer import train

    for stage in ("base", "mixed"):
        train(_stage_config(ARMS[name], stage, runs, cache_dir, threads, device, max_steps), resume=True,
              log=lambda m: print(f"[{stage}] {m}", flush=True))


_STEP = re.compile(r"\[(base|mixed)\] epoch (\d+)/(\d+) step (\d+)/(\d+)")


def _progress(log: Path) -> float:
    """Share of the arm's 14 epochs done, from its last step line."""
    found = _STEP.findall(log.read_text(errors="replace")) if log.is_file() else []
    if not found:
        return 0.0
    stage, epoch, epochs, step, steps = found[-1]
    before = 0 if stage == "base" else BASE_STAGE["epochs"]
    total = BASE_STAGE["epochs"] + MIXED_STAGE["epochs"]
    return (before + int(epoch) - 1 + int(step) / int(steps)) / total


def arms(out: Path, runs: Path, cache_dir: Path, budget_s: float, names: list[str], threads: int, device: str,
         max_steps: int | None) -> None:
    """Train ``names`` in parallel; while the slowest would overrun the budget, stop the lowest priority."""
    out.mkdir(parents=True, exist_ok=True)
    logs = runs / "logs"  # tarred into OUT at the end: few files may come back
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONUNBUFFERED": "1"}
    procs = {}
    t0 = time.time()
    for name in names:
        log = open(logs / f"{name}.log", "w")
        procs[name] = subprocess.Popen([sys.executable, __file__, "train-arm", name, "--runs", str(runs),
                                        "--cache-dir", str(cache_dir), "--threads", str(threads), "--device", device]
                                       + (["--max-steps", str(max_steps)] if max_steps else []),
                                       stdout=log, stderr=subprocess.STDOUT, env=env)
    stopped: dict[str, str] = {}
    seen: list[tuple[float, dict[str, float]]] = []  # (elapsed, progress per arm)
    last_stop = 0.0
    while any(p.poll() is None for p in procs.values()):
        time.sleep(15)
        elapsed = time.time() - t0
        running = [n for n, p in procs.items() if p.poll() is None]
        done = {n: _progress(logs / f"{n}.log") for n in running}
        seen.append((elapsed, done))
        print(f"{elapsed:.0f}s " + " ".join(f"{n} {done[n]:.0%}" for n in running), flush=True)
        # the rate over the last minute since the last stop (stopping one arm speeds up the rest)
        window = [(t, d) for t, d in seen if t >= max(elapsed - 60, last_stop + 15)]
        if len(window) >= 3 and elapsed > 90 and len(running) > 1:
            (t_then, d_then), rates = window[0], {}
            for n in running:
                if n in d_then and done[n] > d_then[n]:
                    rates[n] = (done[n] - d_then[n]) / (elapsed - t_then)
            eta = max(((1 - done[n]) / rates[n] for n in rates), default=0.0)
            if rates and elapsed + eta > budget_s:
                victim = min(running, key=lambda n: ARMS[n].priority)
                procs[victim].terminate()
                last_stop = elapsed
                stopped[victim] = (f"stopped at {done[victim]:.0%} after {elapsed:.0f}s: the others would have "
                                   f"finished {elapsed + eta:.0f}s in, past the {budget_s:.0f}s budget")
                print(f"{victim}: {stopped[victim]}", flush=True)
        if elapsed > budget_s + 60:
            for n in running:
                procs[n].terminate()
                stopped[n] = f"stopped at {done.get(n, 0):.0%}: past the budget"
    results = {"seconds": time.time() - t0, "stopped": stopped,
               "arms": {n: score_arm(n, runs, cache_dir, device) for n in names if n not in stopped}}
    (out / "arms.json").write_text(json.dumps(results, indent=2))
    subprocess.run(["tar", "czf", str(out / "logs.tgz"), "-C", str(runs), "logs"], check=False)
    print(json.dumps({n: {k: v for k, v in r.items() if k != "history"} for n, r in results["arms"].items()}, indent=1))
    best = choose(results["arms"])
    if best:
        split_weights(runs / best / "mixed" / "checkpoints" / "last.pt", out, best)


def score_arm(name: str, runs: Path, cache_dir: Path, device: str) -> dict:
    """PBC validation (re-encoded images) and each wbc_zheng half (the engine's decode), in fp32."""
    from bmengine.engine.taxonomy import get_taxonomy
    from bmengine.training.checkpoint import load_model
    from bmengine.training.image_cache import cache_file
    from bmengine.training.metrics import classification_report
    from bmengine.training.trainer import TrainConfig, drawn_split, predict

    last = runs / name / "mixed" / "checkpoints" / "last.pt"
    if not last.is_file():
        return {"error": f"{last} missing"}
    model, state = load_model(last)
    model = model.to(device)
    cfg = TrainConfig(**state["config"])
    cfg.bf16 = False  # score in float32, as the exported fp32 model
    classes = list(state["classes"])
    dataset, _, val_idx = drawn_split(Path(cfg.data_dir), tuple(classes), None, cfg.val_fraction, cfg.seed)
    images = np.load(cache_file(dataset.files, RESIZE, cache_dir / "images"), mmap_mode="r")
    report = classification_report(dataset.labels[val_idx], predict(model, images[val_idx], cfg), classes,
                                   taxonomy=get_taxonomy(state["taxonomy"]))
    manifest = json.loads((PACK / "p2" / "manifest.json").read_text())
    predicted = np.asarray(classes)[predict(model, np.load(cache_dir / "wbc.npy"), cfg).argmax(axis=1)]
    wbc = {}
    for subset in ("cellavision_blog", "tecom"):
        for half in ("A", "B"):
            rows = [i for i, r in enumerate(manifest["wbc"]) if r["subset"] == subset and r["half"] == half]
            truth = np.asarray([manifest["wbc"][i]["class"] for i in rows])
            wbc[f"{subset}_{half}"] = float((predicted[rows] == truth).mean())
    import hashlib

    split = hashlib.sha256((runs / name / "base" / "split.json").read_bytes()).hexdigest()
    return {"pbc_val_macro_f1": report["macro_f1"], "pbc_val_accuracy": report["accuracy"], **wbc,
            "split_sha256": split, "history": state["history"]}  # split: the same as a run here?


def choose(results: dict) -> str | None:
    """The arm to bring back: best mean of the two labs' A halves among those within 0.005 of the best PBC."""
    scored = {n: r for n, r in results.items() if "error" not in r}
    if not scored:
        return None
    top = max(r["pbc_val_macro_f1"] for r in scored.values())
    fair = {n: r for n, r in scored.items() if r["pbc_val_macro_f1"] >= top - 0.005}
    return max(fair, key=lambda n: fair[n]["cellavision_blog_A"] + fair[n]["tecom_A"])


def split_weights(checkpoint: Path, out: Path, name: str) -> None:
    """The checkpoint without optimiser state, weights in half precision, in parts under PART_BYTES."""
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state.pop("optimizer", None)
    state["model"] = {k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = buffer.getvalue()
    for n, start in enumerate(range(0, len(blob), PART_BYTES)):
        (out / f"{name}.pt.part{n}").write_bytes(blob[start : start + PART_BYTES])
    print(f"{name}: {len(blob) / 2**20:.1f} MiB in {(len(blob) + PART_BYTES - 1) // PART_BYTES} parts", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pack")
    j = sub.add_parser("join")
    j.add_argument("parts", type=Path, nargs="+")
    j.add_argument("--out", type=Path, required=True)
    for name in ("setup", "arms", "train-arm"):
        p = sub.add_parser(name)
        p.add_argument("--cache-dir", type=Path, default=Path("/tmp/gputrain-cache"))
        p.add_argument("--runs", type=Path, default=Path("/tmp/gputrain-runs"))
        p.add_argument("--threads", type=int, default=3)
        p.add_argument("--device", default="cuda")
        p.add_argument("--max-steps", type=int, default=None, help="steps per epoch (a smoke run)")
        if name == "arms":
            p.add_argument("--out", type=Path, required=True)
            p.add_argument("--budget-s", type=float, default=420)
            p.add_argument("--names", default=",".join(ARMS))
        if name == "train-arm":
            p.add_argument("name", choices=list(ARMS))
    args = parser.parse_args(argv)
    os.chdir(REPO)  # the PBC paths are relative to the checkout (see _pbc_data_dir)
    if args.command == "pack":
        pack()
    elif args.command == "join":
        join(args.parts, args.out)
    elif args.command == "setup":
        setup(args.cache_dir)
    elif args.command == "train-arm":
        train_arm(args.name, args.runs, args.cache_dir, args.threads, args.device, args.max_steps)
    else:
        arms(args.out, args.runs, args.cache_dir, args.budget_s, args.names.split(","), args.threads, args.device,
             args.max_steps)


if __name__ == "__main__":
    main()
