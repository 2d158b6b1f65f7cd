"""int8 static quantisation of an exported fp32 graph: which operators, calibrated on what, within
what memory, and the Q/DQ fix-ups after ONNX Runtime's pass (training/export.py calls it).

ONNX Runtime's ``quantize_static`` in QDQ form, per-channel symmetric weights and symmetric
activations (TensorRT's parser needs zero points of 0). Activation ranges come from real training
crops decoded by the engine's own pipeline (``CalibrationReader``), optionally each batch followed
by an augmented copy (``CalibrationAugment``). The calibrator keeps every recorded activation of
every crop in memory, so a calibration that would exhaust the machine is refused first
(``check_calibration_memory``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bmengine.engine.model.card import Preprocessing
from bmengine.training.augment import PRESETS, AugmentConfig, augment_normalised, describe, make_augment_config

# Operator sets for int8; None means every operator ONNX Runtime can quantise.
INT8_OP_SETS: dict[str, tuple[str, ...] | None] = {
    "all": None,
    "conv": ("Conv", "Gemm"),  # weight-bearing layers only
}
# Operators whose presence marks an attention model, for which "auto" picks "conv".
_ATTENTION_OPS = frozenset({"Softmax", "LayerNormalization"})


def check_int8_ops(choice: str) -> None:
    if choice != "auto" and choice not in INT8_OP_SETS:
        raise ValueError(f"--int8-ops: unknown int8 operator set {choice!r}; choose auto or one of {sorted(INT8_OP_SETS)}")


def resolve_int8_ops(choice: str, fp32_path: Path) -> str:
    """"auto" -> "conv" for graphs with softmax/LayerNorm (transformers, EMA), else "all"."""
    check_int8_ops(choice)
    if choice != "auto":
        return choice
    import onnx

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    return "conv" if any(node.op_type in _ATTENTION_OPS for node in graph.node) else "all"




#: ``--calibration-augment`` values besides the presets of training/augment.py
CALIBRATION_AUGMENT_SPECIAL = ("none", "training")


def check_calibration_augment(choice: str, options: dict, int8: bool) -> None:
    if choice not in CALIBRATION_AUGMENT_SPECIAL and choice not in PRESETS:
        raise ValueError(f"--calibration-augment {choice!r}: choose one of "
                         f"{', '.join((*CALIBRATION_AUGMENT_SPECIAL, *PRESETS))}")
    if choice == "none" and options:
        raise ValueError("--calibration-augment-opt needs --calibration-augment (training or a preset)")
    if choice != "none" and not int8:  # an option that would do nothing is a mistake, not a no-op
        raise ValueError("--calibration-augment shapes the int8 model, which --no-int8 leaves out: drop one of them")
    try:  # unknown option names fail here, before the fp32 export
        make_augment_config("basic", **options)
    except KeyError as err:
        raise ValueError(f"--calibration-augment-opt: {err.args[0]}") from None


@dataclass(frozen=True)
class CalibrationAugment:
    """The augmentation int8 calibration crops get (each batch is seen clean and then augmented, so the
    clean crops' ranges stay covered; half as many crops, so the same total): the shipped default lost
    3-7 points on other labs from fp32 to int8 and none on PBC with ranges set on clean PBC crops alone."""

    config: AugmentConfig
    record: dict  # what the int8 card keeps under training.calibration_augmentation
    seed: int = 0

    @classmethod
    def resolve(cls, choice: str, options: dict, state: dict, crop: int) -> "CalibrationAugment | None":
        """``choice`` "training" reads the checkpoint's own recipe; options apply over either."""
        if choice == "none":
            return None
        preset, base = choice, {}
        if choice == "training":
            recorded = state["config"]
            preset, base = recorded.get("augment", "basic"), dict(recorded.get("augment_options") or {})
        merged = {**base, **options}
        config = make_augment_config(preset, crop=crop, **merged)
        return cls(config, {"from": choice, "preset": preset, "options": merged, "config": describe(config)})


class CalibrationReader:
    """ONNX Runtime CalibrationDataReader over real crops, preprocessed by the engine's pipeline on
    ``device`` ("cpu" or "gpu": the decoder the exported model will meet, module docstring); the
    batches come back to the host either way (ONNX Runtime calibrates on the CPU). With ``augment``,
    each batch is followed by an augmented copy of itself."""

    def __init__(self, files: list[str], prep: Preprocessing, input_name: str, batch_size: int = 32,
                 device: str = "cpu", augment: CalibrationAugment | None = None):
        from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

        self.pipeline = CropPipeline(PipelineSpec.from_preprocessing(prep, batch_size=batch_size, device=device))
        # Every batch the same size: the percentile calibrator stacks all batches into one array, so a
        # short last batch failed (ragged shapes); it is filled from the start of the list instead.
        padded = list(files) + list(files[: (-len(files)) % batch_size]) if len(files) > batch_size else list(files)
        self.batches = [padded[i : i + batch_size] for i in range(0, len(padded), batch_size)]
        self.input_name = input_name
        self.prep = prep
        self.augment = augment
        self._pending = None  # the augmented copy of the batch just handed out
        if augment is not None:
            import torch

            self._generator = torch.Generator().manual_seed(augment.seed)

    def get_next(self):
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return {self.input_name: batch}
        if not self.batches:
            return None
        chunk = self.batches.pop(0)
        batch, _ = self.pipeline.decode_to_numpy([Path(f).read_bytes() for f in chunk])
        if self.augment is not None:
            self._pending = augment_normalised(batch, self.augment.config, self.prep.mean, self.prep.std,
                                               self._generator)
        return {self.input_name: batch}


#: Symmetric int8 activations and weights: every int8 zero point is 0, as TensorRT's ONNX parser
#: requires (training/qdq.py). Biases stay int32 DequantizeLinear (zero point 0), which ONNX
#: Runtime's CPU needs to fuse Conv into QLinearConv; compile folds them to fp32 for TensorRT.
#: Option names from onnxruntime.quantization.quantize.quantize_static's docstring (onnxruntime 1.32).
TENSORRT_QDQ_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True}


#: how activation ranges are calibrated (ONNX Runtime's CalibrationMethod, plus its options)
CALIBRATION_METHODS = {
    "minmax": ("MinMax", {}),
    "percentile": ("Percentile", {"CalibPercentile": 99.99}),
    "entropy": ("Entropy", {}),
}


class KeepFp32Error(ValueError):
    """An ``--int8-keep-fp32`` fragment names no node of the exported graph."""


def kept_fp32_nodes(graph, fragments: tuple[str, ...], model_path: Path) -> list[str]:
    """Names of the nodes whose name contains one of ``fragments``; a fragment that names none is an
    error (a typo would otherwise give a plain int8 model whose card claims otherwise)."""
    names = [node.name for node in graph.node]
    missing = [f for f in fragments if not any(f in name for name in names)]
    if missing:
        raise KeepFp32Error(f"--int8-keep-fp32: no node of {model_path.name} has {', '.join(map(repr, missing))} "
                            f"in its name; its scopes include {', '.join(_scopes(names))}")
    return [name for name in names if any(f in name for f in fragments)]


def _scopes(names: list[str], wanted: int = 4, most: int = 20) -> list[str]:
    """The first scope level with at least ``wanted`` scopes (an exported OOD model wraps the network
    in scopes of its own: /tap/model/s4/...), to show what a fragment could be."""
    for depth in range(2, 8):
        scopes = sorted({"/".join(name.split("/")[:depth]) + "/" for name in names if name.count("/") > depth})
        if len(scopes) >= wanted:
            return scopes[:most]
    return scopes[:most]


class CalibrationMemoryError(ValueError):
    """int8 calibration would need more memory than the machine has available."""


#: ONNX Runtime's calibrators keep every calibrated activation of every crop until the end; the
#: process grew by 1.14x those tensors' own size per crop on CoAtNet-0 (peak RSS 6.9 GB for 128
#: crops, 12.0 GB for 256; 35 MB of Conv/Gemm inputs and outputs per crop)
CALIBRATION_MEMORY_FACTOR = 1.25
#: share of the available memory calibration may plan to use (the process itself needs the rest)
CALIBRATION_MEMORY_SHARE = 0.8


def activation_bytes_per_crop(graph, op_types: tuple[str, ...] | None) -> int:
    """Bytes of the float tensors the calibrator records for one crop: the inputs and outputs of the
    nodes of ``op_types`` (None: every node), from the shapes shape inference wrote into ``graph``."""
    sizes = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        tensor = info.type.tensor_type
        if tensor.elem_type == 1:  # float32; a symbolic (batch) dimension counts as 1
            sizes[info.name] = 4 * int(np.prod([max(d.dim_value, 1) for d in tensor.shape.dim]))
    recorded = {name for node in graph.node if op_types is None or node.op_type in op_types
                for name in (*node.input, *node.output) if name in sizes}
    return sum(sizes[name] for name in recorded)


def available_memory() -> int | None:
    """MemAvailable (bytes) where /proc/meminfo has it, else None (no check)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_calibration_memory(per_crop: int, crops: int, available: int | None) -> None:
    """Refuse a calibration that would exhaust the machine, naming a crop count that fits: the
    calibrator would otherwise be killed for memory after minutes, taking the machine with it."""
    need = crops * per_crop * CALIBRATION_MEMORY_FACTOR
    if available is None or need <= CALIBRATION_MEMORY_SHARE * available:
        return
    fits = int(CALIBRATION_MEMORY_SHARE * available / (per_crop * CALIBRATION_MEMORY_FACTOR))
    gib, mib = 1024**3, 1024**2
    raise CalibrationMemoryError(
        f"int8 calibration on {crops} crops would need about {need / gib:.1f} GiB ({per_crop / mib:.0f} MiB of "
        f"activations per crop, and ONNX Runtime keeps them all until the end), and this machine has "
        f"{available / gib:.1f} GiB available: use --calibration-images {fits} or fewer")


def quantize_int8(fp32_path: Path, int8_path: Path, calibration_files: list[str], prep: Preprocessing,
                  ops: str = "all", calibration: str = "minmax", device: str = "cpu",
                  keep_fp32: tuple[str, ...] = (), augment: CalibrationAugment | None = None) -> int:
    """The OOD head (if any) and the nodes named by ``keep_fp32`` fragments stay fp32: they are
    excluded, and their inputs are float tensors. ``device``: where the calibration crops are decoded,
    ``augment``: what their augmented copies get (``CalibrationReader``). Returns the number of nodes
    kept fp32 by ``keep_fp32``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from bmengine.training.ood import head_nodes, unquantise_inputs

    pre = int8_path.with_name(int8_path.stem + ".pre.onnx")
    quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
    graph = onnx.load(str(pre), load_external_data=False).graph
    head = head_nodes(graph)
    kept = [name for name in kept_fp32_nodes(graph, keep_fp32, fp32_path) if name not in head] if keep_fp32 else []
    excluded = head + kept
    tmp = int8_path.with_name(int8_path.name + ".partial")
    try:
        crops = len(calibration_files) * (2 if augment is not None else 1)
        check_calibration_memory(activation_bytes_per_crop(graph, INT8_OP_SETS[ops]), crops, available_memory())
        quantize_static(str(pre), str(tmp), CalibrationReader(calibration_files, prep, "image", device=device, augment=augment),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[calibration][0]),
                        op_types_to_quantize=list(INT8_OP_SETS[ops]) if INT8_OP_SETS[ops] else None,
                        nodes_to_exclude=excluded,
                        extra_options={**TENSORRT_QDQ_OPTIONS, **CALIBRATION_METHODS[calibration][1]})
        if excluded:
            unquantise_inputs(tmp, excluded)
        float_graph_outputs(tmp)
        tmp.replace(int8_path)
    finally:
        pre.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return len(kept)


def float_graph_outputs(model_path: Path) -> int:
    """The graph's outputs (logits) as the float values their last operator computes, not a Q->DQ'd
    copy: ONNX Runtime also quantises a Gemm's output, which rounds the logits to 256 levels and
    clips the largest at the calibrated range. Both the energy part of the OOD score and the
    temperature-scaled confidences read them. TensorRT takes Q/DQ on a layer's inputs only, so
    nothing is lost for it. Returns the number of outputs changed."""
    import onnx

    model = onnx.load(str(model_path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    drop, changed = set(), 0
    for output in graph.output:
        dq = producer.get(output.name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        value = q.input[0]
        readers = [n for n in graph.node if value in n.input and n is not q]
        if readers or any(o.name == value for o in graph.output):
            continue  # the float value is read elsewhere too: leave this pair
        producer[value].output[list(producer[value].output).index(value)] = output.name
        drop.update({q.name, dq.name})
        changed += 1
    if changed:
        kept = []
        for node in graph.node:  # copies: the graph's own list is replaced
            if node.name not in drop:
                kept.append(onnx.NodeProto())
                kept[-1].CopyFrom(node)
        del graph.node[:]
        graph.node.extend(kept)
        read = {name for node in kept for name in node.input}
        unread = [init for init in graph.initializer if init.name not in read]  # the pairs' scales
        for init in unread:
            graph.initializer.remove(init)
        onnx.save(model, str(model_path))
    return changed
