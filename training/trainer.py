"""The training loop: cached images, batch augmentation, bf16 + channels_last on CPU, resumable.

Every epoch writes ``RUN_DIR/checkpoints/last.pt`` (and ``best.pt`` when validation macro-F1
improves) atomically; ``train`` with ``resume=True`` continues from ``last.pt``. A checkpoint holds
only tensors and plain data, because every reader loads it with ``weights_only=True``
(``training/checkpoint.py``): a model file is never unpickled.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from bmengine.engine.bench import machine_words
from bmengine.training.feature_style import FeatureStyleConfig, attach_feature_style
from bmengine.training.losses.consistency import jensen_shannon
from bmengine.training.weight_average import WeightAverage, recompute_batch_norm
from bmengine.training.augment import AugmentConfig, augment, center_crop, describe, make_augment_config, normalize
from bmengine.training.checkpoint import load_checkpoint, provenance
from bmengine.training.dataset import ImageFolder, stratified_split
from bmengine.training.device import device_words, resolve_device
from bmengine.training.image_cache import cached_images
from bmengine.training.losses import LossSpec, create_loss
from bmengine.training.metrics import classification_report
from bmengine.engine.model.networks import ModelSpec, create_model
from bmengine.training.replay import read_replay, with_replay
from bmengine.training.sampler import SAMPLERS


#: what resuming reads back from ``last.pt``
RESUME_KEYS = ("model", "optimizer", "epoch", "history", "best_macro_f1")


@dataclass
class TrainConfig:
    data_dir: str
    run_dir: str
    taxonomy: str | None = None  # None: the taxonomy whose classes equal the folder names
    backbone: str = "regnetx_032"
    attention: str = "se"
    loss: str = "cost_sensitive"
    loss_options: dict = field(default_factory=dict)
    sampler: str = "shuffle"  # shuffle | balanced
    balance_to: int | None = None  # offline augmentation: grow each training class to this many crops
    hue_range: tuple[float, float] | None = None  # Wang et al.'s hue mapping (degrees), also applied by the engine
    resize: int = 128
    crop: int = 112
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adamw"  # adamw | sgd (Hu et al.: SGD, momentum 0.9)
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.5
    val_fraction: float = 0.2
    seed: int = 0
    bf16: bool = True
    threads: int = 2
    max_steps_per_epoch: int | None = None  # tests and smoke runs
    limit_per_class: int | None = None  # tests and smoke runs
    cache_dir: str | None = None  # decoded-image cache; default RUN_DIR/cache (ablations share one)
    init_from: str | None = None  # start from this checkpoint's weights (fine-tuning); same classes and architecture
    replay_from: str | None = None  # replay.json (training/replay.py): base-run crops mixed into training (fine-tuning)
    train_limit_per_class: int | None = None  # at most this many training crops per class, after the split (validation unchanged)
    keep_every: int = 0  # also keep epoch_NNN.pt every N epochs (0: only last.pt and best.pt; each is ~100-300 MB)
    augment: str = "basic"  # augmentation preset (training/augment.py PRESETS); "cross-lab" for stain/scale/camera shift
    augment_options: dict = field(default_factory=dict)  # AugmentConfig field -> value, over the preset
    consistency: float = 0.0  # > 0: two augmented views per crop, plus this weight x their Jensen-Shannon divergence
    feature_style: FeatureStyleConfig = field(default_factory=FeatureStyleConfig)  # MixStyle / DSU in the early stages
    average_from: int | None = None  # SWA: average the weights at every step after this many epochs; BN re-measured
    device: str = "auto"  # auto | cpu | cuda | cuda:N (training/device.py); augmentation stays on the CPU

    def __post_init__(self) -> None:
        if isinstance(self.feature_style, dict):  # read back from a checkpoint's recorded config
            self.feature_style = FeatureStyleConfig(**self.feature_style)
        if self.consistency < 0:
            raise ValueError(f"consistency weight must be >= 0, got {self.consistency}")
        if self.balance_to and self.augment_config().zoom_detail > 1:
            raise ValueError("zoom_detail does not combine with balance_to (the offline copies have no detailed twin)")
        if self.average_from is not None and not 0 <= self.average_from < self.epochs:
            raise ValueError(f"average_from must be an epoch count in [0, {self.epochs}), got {self.average_from}")

    def augment_config(self) -> AugmentConfig:
        return make_augment_config(self.augment, crop=self.crop, **self.augment_options)

    def augment_record(self) -> dict:
        """What the checkpoint (and the exported card's ``training.augmentation``) records."""
        record = {"preset": self.augment, "options": dict(self.augment_options), "config": describe(self.augment_config())}
        if self.consistency > 0:
            record["consistency"] = {"views": 2, "weight": self.consistency, "divergence": "jensen_shannon"}
        if self.feature_style.method != "none":
            record["feature_style"] = asdict(self.feature_style)
        return record


def command_line(argv: list[str]) -> str:
    """The command as a user would retype it: ``bmengine train ...``, not the venv's absolute path."""
    program = Path(argv[0]).name if argv else ""
    return " ".join([program, *argv[1:]])


class TrainingDataError(ValueError):
    """The data folder cannot be trained on (missing, no images, folders no taxonomy knows, fewer training
    crops than one batch); nothing was written. The message names the folder and what is wrong."""


def resolve_taxonomy(classes: tuple[str, ...], name: str | None) -> str:
    from bmengine.engine.taxonomy import get_taxonomy, list_taxonomies

    if name is not None:
        taxonomy = get_taxonomy(name)
        if unknown := set(classes) - set(taxonomy.classes):
            raise ValueError(f"class folders {sorted(unknown)} are not in taxonomy {name!r}")
        return name
    for candidate in list_taxonomies():
        if set(get_taxonomy(candidate).classes) == set(classes):
            return candidate
    shipped = "; ".join(f"{t}: {', '.join(get_taxonomy(t).classes)}" for t in list_taxonomies())
    raise ValueError(f"no shipped taxonomy has exactly the class folders {list(classes)}; pass --taxonomy "
                     f"with one whose classes include them ({shipped})")


def scan_training_data(data_dir: Path, taxonomy: str | None) -> tuple[str, tuple[str, ...]]:
    """(taxonomy name, its classes) for a class-per-folder data folder, or ``TrainingDataError`` naming
    the folder: checked before a run writes anything."""
    from bmengine.engine.taxonomy import get_taxonomy

    try:
        name = resolve_taxonomy(ImageFolder.scan(data_dir).classes, taxonomy)
    except (FileNotFoundError, KeyError, ValueError) as err:
        message = str(err).strip('"')
        raise TrainingDataError(message if str(data_dir) in message else f"{data_dir}: {message}") from None
    return name, get_taxonomy(name).classes


def _limit(dataset: ImageFolder, per_class: int | None, seed: int) -> ImageFolder:
    if per_class is None:
        return dataset
    keep = _limit_indices(np.arange(len(dataset)), dataset.labels, per_class, seed)
    return ImageFolder(dataset.root, dataset.classes, tuple(dataset.files[i] for i in keep), dataset.labels[keep])


def drawn_split(data_dir: Path, classes: tuple[str, ...], limit_per_class: int | None, val_fraction: float,
                seed: int) -> tuple[ImageFolder, np.ndarray, np.ndarray]:
    """The crops of ``data_dir`` and the train/validation indices a run with these settings draws: the
    trainer's own split, drawn again wherever a run's ``split.json`` is not at hand."""
    dataset = _limit(ImageFolder.scan(Path(data_dir), classes), limit_per_class, seed)
    train_idx, val_idx = stratified_split(dataset.labels, val_fraction, seed)
    return dataset, train_idx, val_idx


def _limit_indices(indices: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """At most ``per_class`` of ``indices`` per label, drawn with ``seed``; sorted."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(indices[labels[indices] == c])[:per_class] for c in np.unique(labels[indices])]
    return np.sort(np.concatenate(keep))


def _optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, nesterov=True)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise KeyError(f"unknown optimizer {cfg.optimizer!r}; known: adamw, sgd")


def _lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _plain(value: Any) -> Any:
    """Checkpoint metadata as JSON types (no Path, no NumPy), so ``weights_only=True`` reads it back."""
    return json.loads(json.dumps(value, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"checkpoint metadata cannot hold a {type(value).__name__}: {value!r}")


def _on_cpu(value: Any) -> Any:
    """Every tensor in a (nested) checkpoint moved to the CPU: a run trained on a GPU loads anywhere."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _on_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(v) for v in value)
    return value


def _save(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(_on_cpu(state), tmp)
    tmp.replace(path)


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, cfg: TrainConfig, batch_size: int = 128) -> np.ndarray:
    """Softmax probabilities for uint8 NHWC images at the resize size (centre crop, as the engine),
    computed on the device the model is on."""
    model.eval()
    device = next(model.parameters()).device
    probs = []
    for start in range(0, len(images), batch_size):
        batch = center_crop(torch.from_numpy(np.asarray(images[start : start + batch_size])), cfg.crop)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = model(normalize(batch.to(device), cfg.mean, cfg.std))
        probs.append(logits.float().softmax(dim=1).cpu().numpy())
    return np.concatenate(probs)


def _augmented_batch(images: np.ndarray, detail: np.ndarray | None, idx: np.ndarray, aug_cfg: AugmentConfig,
                     generator: torch.Generator, views: int = 1) -> torch.Tensor:
    """The crops ``idx`` augmented ``views`` times (stacked), as uint8 NHWC; zoom-ins from ``detail`` if given."""
    x = torch.from_numpy(np.asarray(images[idx]))
    sharp = torch.from_numpy(np.asarray(detail[idx])) if detail is not None else None
    return torch.cat([augment(x, aug_cfg, generator, sharp) for _ in range(views)]).mul_(255).to(torch.uint8)


def _detail_images(files, cfg: TrainConfig, cache_dir: Path, hue, log: Callable[[str], None]) -> np.ndarray | None:
    """The training images cached ``zoom_detail`` times larger, where zoom-ins take their pixels from."""
    aug_cfg = cfg.augment_config()
    if aug_cfg.zoom_detail <= 1 or aug_cfg.zoom_range is None:
        return None
    side = int(round(cfg.resize * aug_cfg.zoom_detail))
    t0 = time.perf_counter()
    detail = cached_images(files, side, cache_dir / "images", hue_range=hue)
    log(f"zoom-ins from images cached at {side} px ({time.perf_counter() - t0:.1f}s)")
    return detail


def _finish_average(model: torch.nn.Module, averager: WeightAverage, images: np.ndarray,
                    detail: np.ndarray | None, labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
                    dataset: ImageFolder, classes: tuple[str, ...], taxonomy: str, cfg: TrainConfig, ckpt_dir: Path,
                    log: Callable[[str], None], bn_batches: int = 50) -> dict:
    """Put the weight average into the model, re-measure batch norm on augmented training batches, score
    it on the validation split and make it the run's ``last.pt`` (and ``best.pt`` if it is the best)."""
    from bmengine.engine.taxonomy import get_taxonomy

    averager.apply_to(model)
    device = next(model.parameters()).device
    rng = np.random.default_rng(cfg.seed * 1000 + 999)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + 999)
    aug_cfg = cfg.augment_config()

    def batches():
        for batch in SAMPLERS[cfg.sampler](labels[train_idx], cfg.batch_size, rng)[:bn_batches]:
            with torch.autocast("cpu", enabled=False):  # augment in float32, as in training; only the model in bf16
                x = _augmented_batch(images, detail, np.sort(train_idx[batch]), aug_cfg, generator)
            yield normalize(x.to(device), cfg.mean, cfg.std)

    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
        seen = recompute_batch_norm(model, batches())
    report = classification_report(dataset.labels[val_idx], predict(model, images[val_idx], cfg), list(classes),
                                   taxonomy=get_taxonomy(taxonomy))
    record = {"from_epoch": cfg.average_from, "steps_averaged": averager.count, "batch_norm_images": seen,
              "val_accuracy": report["accuracy"], "val_macro_f1": report["macro_f1"]}
    log(f"weight average of {averager.count} steps (after epoch {cfg.average_from}), batch norm re-measured on "
        f"{seen} crops: val acc {report['accuracy']:.4f} macro-F1 {report['macro_f1']:.4f}")
    last = ckpt_dir / "last.pt"
    state = load_checkpoint(last, require=RESUME_KEYS)
    state.update(model=model.state_dict(), val_report=_plain(report), weight_average=None,
                 weight_average_summary=record)  # applied: a longer resumed run averages afresh
    if report["macro_f1"] > state["best_macro_f1"]:
        state["best_macro_f1"] = report["macro_f1"]
        _save(state, ckpt_dir / "best.pt")
    _save(state, last)
    return record


class InitWeightsError(ValueError):
    """``--init-from`` names weights that cannot start this run; nothing was trained."""


def _init_weights(path: Path, spec: ModelSpec, classes: tuple[str, ...]) -> tuple[dict, dict]:
    """The weights of the checkpoint a run starts from, refused with the reason when they cannot fit
    this run's network (another backbone, size or class list) rather than with a tensor-shape dump;
    and how that checkpoint was trained (``provenance``), kept in this run's checkpoints so that an
    export on a machine without the starting checkpoint still tells its lineage."""
    state = load_checkpoint(path, require=("model",))
    theirs = state.get("model_spec")
    if theirs is not None and (theirs.get("backbone"), theirs.get("attention")) != (spec.backbone, spec.attention):
        raise InitWeightsError(f"--init-from {path}: a {theirs.get('backbone')} + {theirs.get('attention')} model; "
                               f"this run builds {spec.backbone} + {spec.attention} (match --backbone and --attention)")
    if state.get("classes") is not None and tuple(state["classes"]) != tuple(classes):
        raise InitWeightsError(f"--init-from {path}: its classes {list(state['classes'])} are not this run's {list(classes)}")
    return state["model"], provenance(path, state)


def train(cfg: TrainConfig, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train to ``cfg.epochs``; returns the final summary also written to ``RUN_DIR/summary.json``."""
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)  # before any work: a missing GPU is said at once
    run_dir = Path(cfg.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.pt"
    from bmengine.engine.taxonomy import get_taxonomy

    taxonomy, classes = scan_training_data(Path(cfg.data_dir), cfg.taxonomy)  # label order: the taxonomy's
    dataset, train_idx, val_idx = drawn_split(Path(cfg.data_dir), classes, cfg.limit_per_class, cfg.val_fraction,
                                              cfg.seed)
    if cfg.train_limit_per_class is not None:
        train_idx = _limit_indices(train_idx, dataset.labels, cfg.train_limit_per_class, cfg.seed)
    if cfg.replay_from:
        replay = read_replay(Path(cfg.replay_from), classes)
        n_own = len(train_idx)
        dataset, train_idx = with_replay(dataset, train_idx, replay)
        log(f"replay: {len(replay.files)} crops of the base run's training split ({replay.source}) mixed in; "
            f"the {n_own} own training crops repeated to {len(train_idx) - len(replay.files)}")
    if len(train_idx) < cfg.batch_size:  # no full batch: not one step would run, yet a model would be saved
        raise TrainingDataError(f"{cfg.data_dir}: {len(train_idx)} training crops (after holding out {len(val_idx)} "
                                f"for validation) make no batch of --batch-size {cfg.batch_size}; lower "
                                "--batch-size or add crops")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "split.json").write_text(json.dumps({
        "train": list(dict.fromkeys(str(dataset.files[i]) for i in train_idx)),  # once each, however often sampled
        "val": [str(dataset.files[i]) for i in val_idx],
    }))
    log(f"{len(dataset)} images, {len(classes)} classes ({taxonomy}); train {len(train_idx)}, val {len(val_idx)}")

    t0 = time.perf_counter()
    hue = tuple(cfg.hue_range) if cfg.hue_range else None
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "cache"
    images = cached_images(dataset.files, cfg.resize, cache_dir / "images", hue_range=hue)
    detail = _detail_images(dataset.files, cfg, cache_dir, hue, log)
    log(f"images decoded/cached in {time.perf_counter() - t0:.1f}s")
    labels = dataset.labels
    if cfg.balance_to:
        from bmengine.training.balance import balance_offline

        images, labels, train_idx, _ = balance_offline(images, labels, train_idx, cfg.balance_to, cfg.seed)
        log(f"offline augmentation: training set grown to {len(train_idx)} crops")
    train_labels = labels[train_idx]

    spec = ModelSpec(cfg.backbone, cfg.attention, len(classes), input_size=cfg.crop)
    torch.manual_seed(cfg.seed)  # the initial weights: one seed, one run
    model = create_model(spec).to(device, memory_format=torch.channels_last)
    criterion = create_loss(LossSpec(cfg.loss, cfg.loss_options),
                            np.bincount(train_labels, minlength=len(classes))).to(device)
    optimizer = _optimizer(model, cfg)
    start_epoch, history, best_f1 = 0, [], -1.0
    averager: WeightAverage | None = None
    lineage: dict | None = None  # provenance of the --init-from checkpoint
    if cfg.init_from and not (resume and last.is_file()):  # a resumed fine-tune continues its own weights
        weights, lineage = _init_weights(Path(cfg.init_from), spec, classes)
        try:
            model.load_state_dict(weights)
        except RuntimeError as err:  # e.g. an attention model's position tables at another --crop
            first = str(err).strip().splitlines()[-1].strip()
            raise InitWeightsError(f"--init-from {cfg.init_from}: its weights do not fit this run's network ({first})") from None
        log(f"starting from the weights of {cfg.init_from}")
        start_report = classification_report(dataset.labels[val_idx], predict(model, images[val_idx], cfg),
                                             list(classes), taxonomy=get_taxonomy(taxonomy))
        start = {"val_accuracy": start_report["accuracy"], "val_macro_f1": start_report["macro_f1"]}
        (run_dir / "start.json").write_text(json.dumps({**start, "validation": _plain(start_report)}, indent=2))
        log(f"before training: val acc {start['val_accuracy']:.4f} macro-F1 {start['val_macro_f1']:.4f}")
    if resume and last.is_file():
        state = load_checkpoint(last, require=RESUME_KEYS)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, best_f1 = state["epoch"], state["history"], state["best_macro_f1"]
        lineage = state.get("started_from", lineage)
        if state.get("weight_average"):
            averager = WeightAverage.from_state(state["weight_average"], device)
        log(f"resumed from {last} after epoch {start_epoch}")

    steps_per_epoch = len(train_idx) // cfg.batch_size
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    sampler = SAMPLERS[cfg.sampler]
    aug_cfg = cfg.augment_config()
    if cfg.augment != "basic" or cfg.augment_options:
        log(f"augmentation {cfg.augment} {cfg.augment_options or ''}: {describe(aug_cfg)}")
    if cfg.consistency > 0:
        log(f"consistency: two augmented views per crop, Jensen-Shannon weight {cfg.consistency}")
    style_hooks = attach_feature_style(model, cfg.feature_style, cfg.seed)
    if style_hooks is not None:
        log(f"feature style: {cfg.feature_style.method} after the first two stages, p {cfg.feature_style.p}")
    views = 2 if cfg.consistency > 0 else 1
    machine = machine_words()  # per epoch in the history: a resumed run may continue elsewhere
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels once
    log(f"training on {device_words(device)}")
    for epoch in range(start_epoch, cfg.epochs):
        rng = np.random.default_rng(cfg.seed * 1000 + epoch)
        generator = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        if style_hooks is not None:  # per epoch, so a resumed run draws what an unbroken one would
            style_hooks.generator.manual_seed(cfg.seed * 1000 + epoch + 500)
        batches = sampler(train_labels, cfg.batch_size, rng)[:steps_per_epoch]
        model.train()
        t_epoch, losses = time.perf_counter(), []
        for i, batch in enumerate(batches):
            step = epoch * steps_per_epoch + i
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup, cfg.lr)
            idx = np.sort(train_idx[batch])
            y = torch.from_numpy(labels[idx]).to(device)
            x = _augmented_batch(images, detail, idx, aug_cfg, generator, views).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(normalize(x, cfg.mean, cfg.std))
            loss = criterion(logits, y.repeat(views))
            if views == 2:
                loss = loss + cfg.consistency * jensen_shannon(*logits.chunk(2))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cfg.average_from is not None and epoch >= cfg.average_from:
                if averager is None:
                    averager = WeightAverage(model)
                else:
                    averager.update(model)
            losses.append(loss.item())
            if (i + 1) % 20 == 0:
                rate = (i + 1) * cfg.batch_size / (time.perf_counter() - t_epoch)
                log(f"epoch {epoch + 1}/{cfg.epochs} step {i + 1}/{len(batches)} loss {np.mean(losses[-20:]):.4f} {rate:.1f} img/s")
        train_time = time.perf_counter() - t_epoch
        probs = predict(model, images[val_idx], cfg)
        report = classification_report(dataset.labels[val_idx], probs, list(classes), taxonomy=get_taxonomy(taxonomy))
        record = {
            "epoch": epoch + 1,
            "train_loss": float(np.mean(losses)),
            "train_img_per_s": len(batches) * cfg.batch_size / train_time,
            "val_accuracy": report["accuracy"],
            "val_macro_f1": report["macro_f1"],
            "seconds": time.perf_counter() - t_epoch,
            "machine": machine,
            "device": device_words(device),
        }
        history.append(record)
        metrics_dir = run_dir / "metrics"
        metrics_dir.mkdir(exist_ok=True)
        (metrics_dir / f"epoch_{epoch + 1:03d}.json").write_text(json.dumps({**record, "validation": report}, indent=2))
        log(f"epoch {epoch + 1}: loss {record['train_loss']:.4f} val acc {report['accuracy']:.4f} "
            f"macro-F1 {report['macro_f1']:.4f} ({record['seconds']:.0f}s)")
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": epoch + 1,
            "history": _plain(history),
            "best_macro_f1": max(best_f1, report["macro_f1"]),
            "config": _plain(asdict(cfg)),
            "model_spec": spec.to_dict(),
            "classes": list(classes),
            "taxonomy": taxonomy,
            "val_report": _plain(report),
            "command": command_line(sys.argv),
            "augmentation": _plain(cfg.augment_record()),
            "weight_average": averager.to_state() if averager is not None else None,
            **({"started_from": lineage} if lineage else {}),
        }
        if report["macro_f1"] > best_f1:
            best_f1 = report["macro_f1"]
            _save(state, ckpt_dir / "best.pt")
        if cfg.keep_every and (epoch + 1) % cfg.keep_every == 0:
            _save(state, ckpt_dir / f"epoch_{epoch + 1:03d}.pt")
        _save(state, last)
    if style_hooks is not None:
        style_hooks.remove()
    summary = {"config": asdict(cfg), "taxonomy": taxonomy, "history": history, "best_macro_f1": best_f1}
    if averager is not None:
        summary["weight_average"] = _finish_average(model, averager, images, detail, labels, train_idx, val_idx, dataset,
                                                   classes, taxonomy, cfg, ckpt_dir, log)
        summary["best_macro_f1"] = max(best_f1, summary["weight_average"]["val_macro_f1"])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
