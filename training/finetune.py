"""Lab adaptation: a trained model, a few hundred labelled crops from the lab, a short training.

Published cross-site work (Chossegros et al. 2024) reached > 80% on every target set with colour
standardisation plus fine-tuning on <= 100 labelled target images. ``bmengine finetune`` starts
from a trainer checkpoint, or from an exported model through the checkpoint its card names (the
shipped default carries a half-precision copy beside it), trains on the lab's class-per-folder
crops (folder names mapped to the model's classes with ``--label-map``) with a stratified part
held out, exports ONNX with a card, and records in that card both validation sets: the lab's
held-out crops and the original training data's validation split (when its folder is still
there), so a lab sees what it gained and what it may have lost.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from bmengine.training.checkpoint import load_checkpoint
from bmengine.training.trainer import TrainConfig, drawn_split, train


@dataclass
class FinetuneConfig:
    checkpoint: Path  # the trainer checkpoint the model was exported from (checkpoint_of resolves a model file)
    data_dir: Path  # the lab's crops, one folder per label
    run_dir: Path
    label_map: Path | None = None
    epochs: int = 30  # a few hundred crops make only a few steps per epoch
    lr: float = 3e-4  # a fraction of training's 2e-3: adapt, do not forget
    batch_size: int = 16
    val_fraction: float = 0.5  # of the lab's crops, never trained on: the lab's own score
    replay_per_class: int = 25  # base training crops per class mixed in (training/replay.py); 0: none
    train_per_class: int | None = None  # train on at most this many of the lab's crops per class (learning curves)
    seed: int = 0
    name: str | None = None
    model: Path | None = None  # the exported model named on the command line, when it was one
    device: str = "auto"  # where the network trains (training/device.py); the base run's device is not inherited
    threads: int = 2  # CPU threads (augmentation; the network too on a CPU); nor are its threads


def labelled_view(data_dir: Path, view: Path, classes: tuple[str, ...], label_map) -> Path:
    """``view/<model class>/<folder>__<file>``: links to the lab's crops under the model's class names.

    Folders the map leaves out are skipped; a folder that maps to no class of the model is an error.
    """
    from bmengine.training.dataset import IMAGE_SUFFIXES

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: folder of the lab's labelled crops not found")
    folders = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [f.name for f in folders if not label_map.ignored(f.name) and label_map(f.name) not in classes]
    if unknown:
        raise ValueError(f"{data_dir}: folders {unknown} are not classes of the model; map them with --label-map "
                         "(source,model_class; an empty model_class skips a folder)")
    for folder in folders:
        if label_map.ignored(folder.name):
            continue
        target = view / label_map(folder.name)
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.rglob("*")):
            link = target / f"{folder.name}__{path.relative_to(folder).as_posix().replace('/', '__')}"
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and not link.exists():
                os.symlink(path.resolve(), link)
    return view


class BaseModelNotFoundError(FileNotFoundError):
    """An exported model whose card names no checkpoint, or none that is on this machine unchanged."""


def checkpoint_of(model: Path) -> Path:
    """The trainer checkpoint of a model (to fine-tune or explain): ``model`` itself, or, for an exported model (``.onnx``),
    the checkpoint its card names: the half-precision copy shipped beside the model (so the shipped
    default can be fine-tuned on a fresh clone), else the run's own file where it still is. Each
    must match the card's sha256: weights that changed since the export are not this model's."""
    from bmengine.engine.model.card import exported_from, load_card, named_file_problem

    model = Path(model)
    if model.suffix.lower() != ".onnx":
        return model
    candidates = exported_from(model, load_card(model))
    if not candidates:
        raise BaseModelNotFoundError(f"{model}: its card does not name the checkpoint it was exported from (an "
                                     "export before bmengine recorded it); pass RUN/checkpoints/last.pt instead")
    tried = []
    for path, sha256 in candidates:
        if not (problem := named_file_problem(path, sha256)):
            return path
        tried.append(problem)
    raise BaseModelNotFoundError(f"{model}: the checkpoint it was exported from is not here: {'; '.join(tried)}")


def base_split(checkpoint: Path) -> Path:
    """The base run's ``split.json``: ``RUN/checkpoints/last.pt`` -> ``RUN/split.json``."""
    return Path(checkpoint).resolve().parents[1] / "split.json"


def base_training_files(checkpoint: Path, base: dict, classes: tuple[str, ...]) -> tuple[list[Path], str]:
    """The base run's training crops and where the list came from: its ``split.json``, or for a
    checkpoint without its run folder (the copy shipped beside a model) the split drawn again from
    the base data folder with the run's own settings, as the trainer drew it."""
    split = base_split(checkpoint)
    if split.is_file():
        return [Path(p) for p in json.loads(split.read_text())["train"]], str(split)
    data_dir = Path(base["data_dir"])
    if not data_dir.is_dir():
        raise FileNotFoundError(f"neither {split} nor the base run's data folder {data_dir} is on this machine")
    data, train_idx, _ = drawn_split(data_dir, classes, base.get("limit_per_class"), float(base["val_fraction"]),
                                     int(base["seed"]))
    source = f"{data_dir}, split drawn again (seed {base['seed']}, val_fraction {base['val_fraction']})"
    return [data.files[i] for i in train_idx], source


def _replay_file(cfg: FinetuneConfig, base: dict, classes: tuple[str, ...], log: Callable[[str], None]) -> Path | None:
    """``RUN/replay.json``: the base run's training crops to mix in, or None (said in the log: the
    fine-tune then risks forgetting the classes the lab did not label)."""
    from bmengine.training.replay import select_replay, write_replay

    stale = Path(cfg.run_dir) / "replay.json"
    if cfg.replay_per_class <= 0:
        stale.unlink(missing_ok=True)  # an earlier run in this folder must not be reported as this one's replay
        return None
    try:
        files, source = base_training_files(cfg.checkpoint, base, classes)
        replay = select_replay(files, source, Path(base["data_dir"]), classes, cfg.replay_per_class, cfg.seed)
    except (FileNotFoundError, KeyError, ValueError) as err:
        log(f"warning: no replay ({err}); the fine-tuned model may forget classes the lab did not label")
        stale.unlink(missing_ok=True)
        return None
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    return write_replay(replay, classes, Path(cfg.run_dir) / "replay.json")


def finetune_config(cfg: FinetuneConfig, base: dict, taxonomy: str, data_view: Path,
                    replay: Path | None = None) -> TrainConfig:
    """The base run's recipe (architecture, sizes, normalisation, augmentation), a fine-tuning budget."""
    known = {f.name for f in fields(TrainConfig)}
    recipe = {k: v for k, v in base.items() if k in known}
    recipe.update(data_dir=str(data_view), run_dir=str(cfg.run_dir), taxonomy=taxonomy, epochs=cfg.epochs,
                  lr=cfg.lr, batch_size=cfg.batch_size, val_fraction=cfg.val_fraction, seed=cfg.seed,
                  warmup_epochs=0.0, init_from=str(cfg.checkpoint), balance_to=None, limit_per_class=None,
                  max_steps_per_epoch=None, cache_dir=None, replay_from=str(replay) if replay else None,
                  train_limit_per_class=cfg.train_per_class, device=cfg.device, threads=cfg.threads)
    for key in ("mean", "std", "hue_range"):
        if isinstance(recipe.get(key), list):
            recipe[key] = tuple(recipe[key])
    return TrainConfig(**recipe)


def finetune(cfg: FinetuneConfig, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Train, export (fp32 + int8 with cards) and score on the base validation split too."""
    from bmengine.engine.labels import LabelMap
    from bmengine.training.export import ExportConfig, export

    state = load_checkpoint(cfg.checkpoint, require=("model", "model_spec", "config", "classes", "taxonomy"))
    classes = tuple(state["classes"])
    label_map = LabelMap.load(cfg.label_map, classes) if cfg.label_map else LabelMap()
    view = labelled_view(cfg.data_dir, Path(cfg.run_dir) / "lab-data", classes, label_map)
    replay = _replay_file(cfg, state["config"], classes, log)
    tcfg = finetune_config(cfg, state["config"], state["taxonomy"], view, replay)
    summary = train(tcfg, resume=True, log=log)
    log(f"fine-tuned: best lab-validation macro-F1 {summary['best_macro_f1']:.4f}")
    out = Path(cfg.run_dir) / "export" / f"{cfg.name or Path(cfg.run_dir).name}.onnx"
    paths = export(ExportConfig(Path(cfg.run_dir) / "checkpoints" / "last.pt", out, name=cfg.name), log=log)
    for path in paths.values():
        _record_base(path, state, cfg, log)
    return paths


def _replay_record(path: Path) -> dict | None:
    """How many base crops of each class were replayed, and from which split (None: no replay)."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    counts = {c: record["classes"].count(c) for c in sorted(set(record["classes"]))}
    return {"from": record["source"], "per_class": counts, "n": len(record["files"])}


def _record_base(model_path: Path, base_state: dict, cfg: FinetuneConfig, log: Callable[[str], None]) -> None:
    """Add to the card where the model came from and how it scores on the original validation split."""
    from bmengine.engine.backends import BackendOptions, load_backend
    from bmengine.engine.evaluate import evaluate_files
    from bmengine.engine.model.card import load_card, sha256_of, write_card

    card = load_card(model_path)
    base = base_state["config"]
    card.training["finetuned_from"] = {"model": str(cfg.model) if cfg.model else None,
                                       "checkpoint": str(cfg.checkpoint), "sha256": sha256_of(cfg.checkpoint),
                                       "lab_data": str(cfg.data_dir),
                                       "label_map": str(cfg.label_map) if cfg.label_map else None,
                                       "replay": _replay_record(Path(cfg.run_dir) / "replay.json")}
    start = Path(cfg.run_dir) / "start.json"
    if start.is_file():  # the base weights on the same held-out lab crops (trainer, before the first step)
        before = json.loads(start.read_text())
        card.metrics["validation_before_finetune"] = {"accuracy": before["val_accuracy"],
                                                      "macro_f1": before["val_macro_f1"],
                                                      "scored_by": "trainer (PyTorch, fp32) on the same held-out crops"}
    data_dir = Path(base.get("data_dir", ""))
    if data_dir.is_dir():
        data, _, val = drawn_split(data_dir, tuple(card.classes), base.get("limit_per_class"),
                                   float(base["val_fraction"]), int(base["seed"]))
        backend = load_backend(model_path, BackendOptions())
        report = evaluate_files(backend, [data.files[i] for i in val], data.labels[val])
        card.metrics["base_validation"] = {k: report[k] for k in ("n", "accuracy", "macro_f1", "per_class_f1")}
        card.metrics["base_validation_split"] = f"{data_dir}: seed {base['seed']}, val_fraction {base['val_fraction']}"
        log(f"{model_path.name}: original validation macro-F1 {report['macro_f1']:.4f}")
    else:
        card.metrics["base_validation"] = {"not_measured": f"{data_dir} is not on this machine"}
    write_card(card, model_path)
