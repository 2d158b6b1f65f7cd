"""Checkpoint -> ONNX (fp32) + int8 static-quantised ONNX (+ fp16 ONNX), each with a model card.

int8 uses ONNX Runtime static quantisation (QDQ, per-channel weights; training/quantize.py)
calibrated on real training crops decoded by the engine's pipeline; dynamic int8 is avoided
(measured 6-8 img/s here vs 130+ for static). Which operators get quantised is a named set
(``INT8_OP_SETS``): attention models keep their softmax, attention MatMuls, LayerNorm and
elementwise ops in fp32, because quantising those cost CoAtNet-0 0.31 points of validation macro-F1
against 0.05 for its convolutions alone. Both models are scored on the run's validation split
through the engine's own preprocessing, and the numbers go into their cards.

Open set and calibration (issue 10): the fp32 graph gets a second output, ``ood_score`` (a
Mahalanobis distance on the penultimate features, fitted on the training split: training/ood.py),
which int8 quantisation leaves in fp32; per model, the OOD threshold and the softmax temperature
(training/calibrate.py) are fitted on the validation split and written to the card (``ood``,
``calibration``). By default the threshold applies to that distance plus the logits' energy, each
standardised on the same validation scores (``--ood-score``, engine/backends/ood_score.py).

fp16 (``--fp16``, issue 13): ``<stem>_fp16.onnx``, the fp32 graph converted by training/fp16.py
(float32 IO, Softmax/LayerNorm/OOD head in fp32), for fp16 TensorRT plans; scored, calibrated and
given its OOD threshold like the others.

Decoder (issue 13 item 9): the crops int8 is calibrated on and the OOD statistics are fitted on are
decoded by the engine's own pipeline on ``decode_device``: ``auto`` is the GPU (nvJPEG, DALI
"mixed") on a machine with one, else the CPU (libjpeg-turbo). A GPU machine exports for the decoder
its plans will run with. With chroma upsampling aligned (engine/preprocess/dali_pipeline.py) nvJPEG
and libjpeg-turbo differ by IDCT rounding, a grey level or two on some pixels, which should move a
99.99th-percentile activation range by far less than one int8 step, so either decoder's int8 model
should run on the other (an H100 measured at most 2 grey levels on clean crops,
benchmarks/results/2026-11-26-h100-gpu-path.md; int8 calibrated on nvJPEG's pictures has not run).
The card records which decoder it was (``training.calibration_decoder``). The validation passes
(metrics, temperature, OOD threshold) run through ONNX Runtime, whose backend decodes on the CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from bmengine.engine import __version__
from bmengine.engine.model.card import ModelCard, Preprocessing, sha256_of, write_card
from bmengine.training.checkpoint import started_from
from bmengine.training.quantize import (CALIBRATION_METHODS, INT8_OP_SETS, CalibrationAugment, CalibrationMemoryError,
                                        KeepFp32Error, check_calibration_augment, check_int8_ops, kept_fp32_nodes,
                                        quantize_int8, resolve_int8_ops)
from bmengine.training.trainer import _save, command_line, drawn_split


#: OOD scores a card's threshold may apply to (``--ood-score``)
OOD_SCORES = ("mahalanobis+energy", "mahalanobis-tied")


@dataclass
class ExportConfig:
    checkpoint: Path
    out: Path  # the fp32 .onnx; the int8 model goes beside it as <stem>_int8.onnx
    int8: bool = True
    calibration_images: int = 256
    evaluate: bool = True
    opset: int = 17
    name: str | None = None
    int8_ops: str = "auto"  # "auto" or a key of INT8_OP_SETS
    # activation ranges: the 99.99th percentile (symmetric int8 spends half its range on the sign, so
    # MinMax's outliers cost 0.9 macro-F1 points on the cross-lab default; percentile: none)
    int8_calibration: str = "percentile"
    # crops int8 is calibrated on besides the clean ones: "none", "training" (the checkpoint's own
    # augmentation recipe) or a preset of training/augment.py, with ``calibration_augment_options`` over it;
    # each calibration batch is then seen twice, clean and augmented (CalibrationAugment)
    calibration_augment: str = "none"
    calibration_augment_options: dict = field(default_factory=dict)
    ood: bool = True  # a second output, ood_score (Mahalanobis, training/ood.py), and the card's ood record
    false_flag_rate: float = 0.05  # share of validation crops above the OOD threshold
    ood_fit_images: int = 0  # training crops the class means/covariance are fitted on (0: all of them)
    # what the threshold applies to: the graph's Mahalanobis output alone, or its standardised sum
    # with the logits' energy (engine/backends/ood_score.py; better on unseen classes of the same lab)
    ood_score: str = "mahalanobis+energy"
    calibrate: bool = True  # temperature scaling fitted on the validation split (training/calibrate.py)
    fp16: bool = False  # also write <stem>_fp16.onnx (training/fp16.py), for fp16 TensorRT plans
    decode_device: str = "auto"  # decoder of the calibration/OOD-fit crops: auto, cpu or gpu (module docstring)
    # node-name fragments whose nodes int8 leaves fp32, as it does the OOD head (e.g. "/stages.3/": the
    # last stage, whose features the OOD distance reads; open-set.md measures what it buys and costs)
    int8_keep_fp32: tuple[str, ...] = ()
    # <stem>.checkpoint.pt beside the model (half precision, no optimiser): what `bmengine finetune
    # MODEL.onnx` starts from where the training run is not, e.g. on a fresh clone with the shipped default
    with_checkpoint: bool = False

    def __post_init__(self) -> None:
        check_int8_ops(self.int8_ops)  # before the fp32 export, not after it
        if self.decode_device not in DECODE_DEVICES:
            raise ValueError(f"--decode-device {self.decode_device!r}: choose one of {', '.join(DECODE_DEVICES)}")
        if self.int8_calibration not in CALIBRATION_METHODS:
            raise ValueError(f"--int8-calibration {self.int8_calibration!r}: choose one of {sorted(CALIBRATION_METHODS)}")
        if self.ood_score not in OOD_SCORES:
            raise ValueError(f"--ood-score {self.ood_score!r}: choose one of {', '.join(OOD_SCORES)}")
        if any(not fragment.strip() for fragment in self.int8_keep_fp32):
            raise ValueError("--int8-keep-fp32: an empty fragment would match every node")
        if self.int8_keep_fp32 and not self.int8:  # an option that would do nothing is a mistake, not a no-op
            raise ValueError("--int8-keep-fp32 shapes the int8 model, which --no-int8 leaves out: drop one of them")
        check_calibration_augment(self.calibration_augment, self.calibration_augment_options, self.int8)
        if not 0 < self.false_flag_rate <= 0.5:
            raise ValueError(f"--false-flag-rate must be in (0, 0.5], not {self.false_flag_rate}")


#: where calibration crops are decoded: "auto" = "gpu" where CUDA sees a device, else "cpu"
DECODE_DEVICES = ("auto", "cpu", "gpu")
DECODER_NAMES = {"cpu": "libjpeg-turbo (DALI cpu)", "gpu": "nvJPEG (DALI mixed)"}


def resolve_decode_device(choice: str) -> str:
    """``auto`` -> the GPU's decoder where this machine has a CUDA device, else the CPU's."""
    if choice != "auto":
        return choice
    from bmengine.engine.backends.devices import cuda_device_count

    return "gpu" if cuda_device_count() > 0 else "cpu"


#: what an export reads from a checkpoint besides the model
EXPORT_KEYS = ("config", "classes", "taxonomy", "epoch", "history")


def _load(checkpoint: Path):
    from bmengine.training.checkpoint import load_model

    return load_model(checkpoint, require=EXPORT_KEYS)


def export_onnx(model, path: Path, crop: int, opset: int, outputs: tuple[str, ...] = ("logits",)) -> None:
    """``outputs``: names of the model's outputs, in order (the first is always the logits)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, crop, crop)
    tmp = path.with_name(path.name + ".partial")
    torch.onnx.export(model, (dummy,), str(tmp), input_names=["image"], output_names=list(outputs),
                      dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                      opset_version=opset, dynamo=False)
    tmp.replace(path)


def _onnx_outputs(path: Path, files: list[str], prep: Preprocessing, batch_size: int = 64,
                  device: str = "cpu") -> tuple[list[np.ndarray], np.ndarray]:
    """Every output of an ONNX model for image files, through the engine's own decoding, and which
    files decoded (the others' rows are meaningless)."""
    import onnxruntime as ort

    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    from bmengine.engine.backends.onnxruntime_backend import session_options

    so = session_options()
    so.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    pipeline = CropPipeline(PipelineSpec.from_preprocessing(prep, batch_size=batch_size, device=device))
    chunks: list[list[np.ndarray]] = []
    ok: list[bool] = []
    for start in range(0, len(files), batch_size):
        batch, errors = pipeline.decode_to_numpy([Path(f).read_bytes() for f in files[start : start + batch_size]])
        chunks.append(session.run(None, {"image": batch}))
        ok += [e is None for e in errors]
    return [np.concatenate(parts) for parts in zip(*chunks)], np.asarray(ok)


def _export_with_ood(model, state: dict, cfg: "ExportConfig", prep: Preprocessing, train_files: list[str],
                     log: Callable[[str], None]) -> dict:
    """Fit the Mahalanobis statistics on the training split's features and export the fp32 model
    with its second output ``ood_score`` to ``cfg.out``; returns the card's ``ood`` record (its
    threshold is set later, per precision, on the validation split)."""
    from bmengine.training import ood

    classes = list(state["classes"])
    files = list(train_files)
    if cfg.ood_fit_images and len(files) > cfg.ood_fit_images:
        files = _stratified_sample(files, _labels_for(files, classes), cfg.ood_fit_images)
    t0 = time.perf_counter()
    tap = cfg.out.with_name(cfg.out.stem + ".features.onnx")
    try:
        export_onnx(ood.feature_model(model, len(classes)), tap, prep.crop, cfg.opset, ("logits", ood.FEATURES_NAME))
        (_, features), decoded = _onnx_outputs(tap, files, prep, device=resolve_decode_device(cfg.decode_device))
    finally:
        tap.unlink(missing_ok=True)
    files = [f for f, ok in zip(files, decoded) if ok]
    features = features[decoded]
    stats = ood.fit_tied_gaussian(features, _labels_for(files, classes))
    export_onnx(ood.model_with_ood(model, len(classes), stats), cfg.out, prep.crop, cfg.opset,
                ("logits", ood.OUTPUT_NAME))
    log(f"OOD head: class means + tied covariance of {features.shape[1]}-d features fitted on {len(files)} "
        f"training crops (Ledoit-Wolf shrinkage {stats.shrinkage:.3f}) in {time.perf_counter() - t0:.0f}s")
    return {"score": ood.SCORE_NAME, "output": ood.OUTPUT_NAME, "false_flag_rate": cfg.false_flag_rate,
            "feature_dim": stats.feature_dim, "classes_fitted": [classes[i] for i in stats.class_index],
            "shrinkage": round(stats.shrinkage, 5),
            "fitted_on": f"class means and one shared covariance on the features of {len(files)} training-split "
                         "crops; threshold on the validation split's scores through this model"}


class SplitNotFoundError(FileNotFoundError):
    """The run's train/validation split can be neither read nor drawn again (nothing is written)."""


def _split_files(state: dict, checkpoint: Path, log: Callable[[str], None] = print) -> dict[str, list[str]]:
    """The run's train/validation crops: its ``split.json``, or for a checkpoint without its run folder
    (the copy shipped beside a model) the split drawn again from its data folder, as the trainer drew it."""
    config = state["config"]
    for split in (Path(config["run_dir"]) / "split.json", checkpoint.parent.parent / "split.json"):
        if split.is_file():
            return json.loads(split.read_text())
    data_dir = Path(config["data_dir"])
    if not data_dir.is_dir():
        raise SplitNotFoundError(f"{checkpoint}: neither its run's split.json nor its data folder {data_dir} is here")
    if config.get("replay_from") or config.get("train_limit_per_class"):
        raise SplitNotFoundError(f"{checkpoint}: its run's split.json is not here, and its training crops (replayed "
                                "or limited per class) cannot be drawn again without it")
    data, train_idx, val_idx = drawn_split(data_dir, tuple(state["classes"]), config.get("limit_per_class"),
                                           float(config["val_fraction"]), int(config["seed"]))
    log(f"no split.json beside {checkpoint}: split drawn again from {data_dir} (seed {config['seed']}, "
        f"val_fraction {config['val_fraction']})")
    return {"train": [str(data.files[i]) for i in train_idx], "val": [str(data.files[i]) for i in val_idx]}


def _labels_for(files: list[str], classes: list[str]) -> np.ndarray:
    """Class of each file from its class folder (nested sub-folders allowed)."""
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for f in files:
        parts = Path(f).parts
        labels.append(next(index[p] for p in reversed(parts[:-1]) if p in index))
    return np.asarray(labels)


def _stratified_sample(files: list[str], labels: np.ndarray, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    per_class = max(1, n // len(np.unique(labels)))
    picks = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return [files[i] for i in np.sort(np.concatenate(picks))]


def preprocessing_of(state: dict) -> Preprocessing:
    """The preprocessing a trainer checkpoint's model was trained with (its card's record)."""
    tcfg = state["config"]
    hue = tcfg.get("hue_range")
    return Preprocessing(resize=tcfg["resize"], crop=tcfg["crop"], mean=tuple(tcfg["mean"]), std=tuple(tcfg["std"]),
                         hue_range=tuple(hue) if hue else None)


def checkpoint_card(state: dict, weights: Path, name: str) -> ModelCard:
    """The card of a trainer checkpoint's own model (fp32, no metrics, calibration or OOD record):
    what a route that skips the export knows about it."""
    return _card(state, weights, "fp32", name, preprocessing_of(state), {})


def _card(state: dict, weights: Path, precision: str, name: str, prep: Preprocessing, extra: dict) -> ModelCard:
    cfg = state["config"]
    return ModelCard(
        name=name,
        classes=list(state["classes"]),
        taxonomy=state["taxonomy"],
        architecture={**state["model_spec"], "loss": cfg["loss"], "sampler": cfg["sampler"], "framework": "timm"},
        preprocessing=prep,
        weights_file=weights.name,
        weights_sha256=sha256_of(weights),
        precision=precision,
        training={
            "data": cfg["data_dir"],
            "command": command_line(state["command"].split()) if state.get("command") else "",
            "epochs": state["epoch"],
            "batch_size": cfg["batch_size"],
            "optimizer": cfg["optimizer"],
            "lr": cfg["lr"],
            "seed": cfg["seed"],
            "val_fraction": cfg["val_fraction"],
            "train_seconds": round(sum(h["seconds"] for h in state["history"]), 1),
            "train_img_per_s": round(float(np.mean([h["train_img_per_s"] for h in state["history"]])), 1),
            "machines": sorted({h["machine"] for h in state["history"] if "machine" in h}),
            "devices": sorted({h["device"] for h in state["history"] if "device" in h}),
            # how the training images differed from the data folder's, when they did (benchmarks/gpu_training.py)
            **({"data_note": state["data_note"]} if state.get("data_note") else {}),
            "history": state["history"],
            # the augmentation recipe (models trained before it was recorded used the basic one)
            "augmentation": state.get("augmentation") or {"preset": cfg.get("augment", "basic"),
                                                          "options": cfg.get("augment_options", {})},
            # weights on the line between two checkpoints (training/interpolate.py): which, and where
            **({"interpolated": state["interpolated"]} if state.get("interpolated") else {}),
            **extra.get("training", {}),
        },
        metrics=extra.get("metrics", {}),
        created_by={"software": "bmengine", "version": __version__},
    )


#: what a checkpoint shipped beside its model keeps: enough to fine-tune it and to export it again
SHIPPED_CHECKPOINT_KEYS = ("model", "model_spec", "config", "classes", "taxonomy", "command", "epoch", "history",
                           "augmentation", "interpolated", "data_note", "started_from")


def write_half_precision_checkpoint(state: dict, path: Path) -> Path:
    """A trainer checkpoint to ship beside its exported model: float weights in half precision and
    no optimiser state (CoAtNet-0: 51 MiB against a last.pt's 305 MiB), plain data only. Rounding to
    half precision moves each weight by at most 2^-11 of its size, far less than one fine-tuning
    step; a tensor with values beyond half precision's range stays in single precision."""
    import torch

    def fits_half(tensor: torch.Tensor) -> bool:
        return tensor.is_floating_point() and (tensor.numel() == 0
                                                or bool(tensor.abs().max() < torch.finfo(torch.float16).max))

    weights = {key: tensor.half() if fits_half(tensor) else tensor for key, tensor in state["model"].items()}
    _save({**{key: state[key] for key in SHIPPED_CHECKPOINT_KEYS if key in state}, "model": weights}, path)
    return path


def _checkpoint_record(cfg: ExportConfig, state: dict, log: Callable[[str], None]) -> dict:
    """The card's ``training.checkpoint``: the file the model was exported from and, with
    ``--with-checkpoint``, the half-precision copy beside it (``bmengine finetune MODEL.onnx`` reads
    either, when its sha256 still matches)."""
    record = {"file": str(cfg.checkpoint), "sha256": sha256_of(cfg.checkpoint)}
    if cfg.with_checkpoint:
        copy = write_half_precision_checkpoint(state, cfg.out.with_name(cfg.out.stem + ".checkpoint.pt"))
        record["beside_model"] = {"file": copy.name, "sha256": sha256_of(copy), "weights": "float16"}
        log(f"wrote {copy} ({copy.stat().st_size / 2**20:.0f} MiB: the weights `bmengine finetune` starts from)")
    return record


def export(cfg: ExportConfig, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Write the fp32 ONNX (and the int8 and fp16 ones) with cards; returns {"fp32": path, "int8": path,
    "fp16": path} for those written."""
    from bmengine.engine.backends import BackendOptions
    from bmengine.engine.backends.onnxruntime_backend import OnnxRuntimeBackend
    from bmengine.engine.backends.ood_score import COMBINED_SCORE, Standardiser
    from bmengine.engine.evaluate import score_files
    from bmengine.engine.metrics import classification_report
    from bmengine.engine.taxonomy import get_taxonomy
    from bmengine.training.calibrate import calibration_record, softmax_t
    from bmengine.training.ood import threshold_at

    model, state = _load(cfg.checkpoint)
    tcfg = state["config"]
    prep = preprocessing_of(state)
    name = cfg.name or cfg.out.stem
    outputs = {"fp32": cfg.out}
    split = _split_files(state, cfg.checkpoint, log)
    classes = list(state["classes"])
    ood_record: dict = {}  # the card's "ood" record, less its per-precision threshold
    if cfg.ood:
        ood_record = _export_with_ood(model, state, cfg, prep, split["train"], log)
    else:
        export_onnx(model, cfg.out, prep.crop, cfg.opset)
    log(f"wrote {cfg.out}")
    int8_training: dict = {}  # what the int8 card adds under "training"
    if cfg.int8:
        int8_ops = resolve_int8_ops(cfg.int8_ops, cfg.out)
        if cfg.int8_keep_fp32:  # a fragment that names no node fails here, before the calibration
            import onnx

            try:
                kept_fp32_nodes(onnx.load(str(cfg.out), load_external_data=False).graph, cfg.int8_keep_fp32, cfg.out)
            except KeepFp32Error:
                cfg.out.unlink()  # it has no card yet: no backend would load it
                raise
        int8 = cfg.out.with_name(cfg.out.stem + "_int8.onnx")
        train_files = split["train"]
        calib_augment = CalibrationAugment.resolve(cfg.calibration_augment, cfg.calibration_augment_options,
                                                   state, prep.crop)
        # with augmented copies, half as many crops: the calibrator holds every activation of every
        # crop in memory at once (CALIBRATION_MEMORY_FACTOR), so the total stays the same
        clean_crops = cfg.calibration_images // 2 if calib_augment else cfg.calibration_images
        calib = _stratified_sample(train_files, _labels_for(train_files, classes), clean_crops)
        t0 = time.perf_counter()
        decoder = resolve_decode_device(cfg.decode_device)
        try:
            kept = quantize_int8(cfg.out, int8, calib, prep, int8_ops, cfg.int8_calibration, device=decoder,
                                 keep_fp32=cfg.int8_keep_fp32, augment=calib_augment)
        except CalibrationMemoryError:
            cfg.out.unlink()  # it has no card yet: no backend would load it
            raise
        copies = " and an augmented copy of each" if calib_augment else ""
        log(f"wrote {int8} ({int8_ops} operators, calibrated on {len(calib)} training crops{copies} "
            f"in {time.perf_counter() - t0:.0f}s" + (f"; {kept} nodes kept fp32" if kept else "") + ")")
        outputs["int8"] = int8
        int8_training = {"calibration_images": cfg.calibration_images,
                         "calibration_method": cfg.int8_calibration,
                         "calibration_decoder": DECODER_NAMES[decoder],
                         "quantisation": "symmetric int8 Q/DQ (zero points 0), int32 biases",
                         "int8_ops": {"set": int8_ops, "op_types": list(INT8_OP_SETS[int8_ops] or ["all"])}}
        if calib_augment is not None:
            int8_training["calibration_augmentation"] = {**calib_augment.record, "clean_crops": len(calib)}
        if cfg.int8_keep_fp32:
            int8_training["int8_kept_fp32"] = {"name_fragments": list(cfg.int8_keep_fp32), "nodes": kept}
    precision_training = {"int8": int8_training}  # what each precision's card adds under "training"
    checkpoint = _checkpoint_record(cfg, state, log)
    # a run started from another's weights (`train --init-from`): the card's own training fields
    # describe only that run, so say how the weights it started from were trained
    started = state.get("started_from") or started_from(tcfg)  # recorded at training time since 2026-11-26
    if cfg.fp16:
        from bmengine.training.fp16 import fp16_path_for, to_fp16

        fp16 = fp16_path_for(cfg.out)
        record = to_fp16(cfg.out, fp16)
        log(f"wrote {fp16} (float32 IO; {', '.join(f'{n} {op}' for op, n in record.fp32_nodes.items()) or 'no'} "
            "node(s) kept fp32)")
        outputs["fp16"] = fp16
        precision_training["fp16"] = {"fp16": record.as_card()}
    val_files = split["val"]
    val_labels = _labels_for(val_files, classes)
    scored: dict[str, dict] = {}
    for precision, path in outputs.items():
        extra: dict = {"training": {"checkpoint": checkpoint, **({"started_from": started} if started else {}),
                                    **precision_training.get(precision, {})}}
        card = _card(state, path, precision, name + ("" if precision == "fp32" else f"-{precision}"), prep, extra)
        # provisional card: the backend refuses a model without one (its ood record has no threshold
        # yet, so a card left like this by a failed export is refused too)
        card.ood = dict(ood_record)
        write_card(card, path)
        if not (cfg.evaluate or cfg.calibrate or ood_record):
            continue
        # one pass over the validation split per model: raw logits + OOD scores, through the engine's decoding
        backend = OnnxRuntimeBackend(path, card, BackendOptions())
        t0 = time.perf_counter()
        logits, scores, _ = score_files(backend, [Path(f) for f in val_files], raw=True)
        seconds = time.perf_counter() - t0
        ok = ~np.isnan(logits).any(axis=1)
        logits, scores, labels = logits[ok], scores[ok], val_labels[ok]
        fitted_on = (f"validation split, {int(ok.sum())} crops held out by seed {tcfg['seed']}, "
                     f"through this {precision} model")
        if cfg.calibrate:
            card.calibration = calibration_record(logits, labels, fitted_on)
            log(f"{precision}: temperature {card.calibration['temperature']:.3f}: ECE "
                f"{card.calibration['ece_before']:.4f} -> {card.calibration['ece_after']:.4f}")
        if ood_record:
            record = dict(ood_record)
            if cfg.ood_score == COMBINED_SCORE:  # standardised on this precision's own validation scores
                standardiser = Standardiser.fit(scores, logits)
                scores = standardiser.combine(scores, logits)
                record.update(score=COMBINED_SCORE, standardise={**standardiser.as_record(), "fitted_on": fitted_on})
            threshold = threshold_at(scores, cfg.false_flag_rate)
            card.ood = {"score": record["score"], "output": record["output"], "threshold": threshold,
                        **record, "validation_flagged": round(float(np.mean(scores > threshold)), 5),
                        "threshold_fitted_on": fitted_on}
            log(f"{precision}: OOD threshold {threshold:.2f} ({card.ood['validation_flagged']:.1%} of validation "
                "crops above it)")
        if cfg.evaluate:
            report = classification_report(labels, softmax_t(logits, card.temperature), classes,
                                           taxonomy=get_taxonomy(card.taxonomy))
            card.metrics = {
                "validation": {k: report[k] for k in ("n", "accuracy", "top5_accuracy", "macro_precision",
                                                      "macro_recall", "macro_f1", "per_class_f1", "confusion_matrix",
                                                      "expected_calibration_error")},
                "validation_split": f"{len(val_files)} crops held out by seed {tcfg['seed']} "
                                    f"(stratified {tcfg['val_fraction']:.0%}), never trained on",
                "engine_img_per_s_2_threads": round(len(val_files) / seconds, 1),
            }
            scored[precision] = card.metrics["validation"]
            if precision != "fp32":  # the int8/fp16 card also records the fp32 model it came from
                card.metrics["fp32_validation"] = {k: scored["fp32"][k] for k in
                                                   ("accuracy", "macro_f1", "per_class_f1")}
            log(f"{precision}: val accuracy {report['accuracy']:.4f} macro-F1 {report['macro_f1']:.4f} "
                f"({len(val_files) / seconds:.0f} img/s decode+infer)")
        write_card(card, path)
    return outputs
