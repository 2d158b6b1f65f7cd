"""fp32 ONNX -> fp16 ONNX: the file an fp16 TensorRT plan is compiled from.

Why a file and not a builder flag: a strongly typed network takes every tensor's type from the
ONNX graph (TensorRT's FP16 BuilderFlag is deprecated since 10.12 and gone in 11), so an fp16
plan needs fp16 written into the graph (training/compile_tensorrt.py).

The conversion is ONNX Runtime's own (``onnxruntime.transformers.float16.convert_float_to_float16``,
in the onnxruntime wheel the engine already installs: no new dependency): float32 weights and
activations become float16, Cast nodes are inserted where an fp32 node meets an fp16 one.

What stays fp32, and why:

- **the IO**: input ``image`` and every output stay float32 (``keep_io_types``), with a Cast at
  each edge. The decoder (DALI) emits float32 and every backend feeds float32: the TensorRT backend
  refuses a non-float input (``get_tensor_dtype``), ONNX Runtime's feeds are float32. One Cast of
  the input costs one elementwise pass over the batch, small beside the network; fp16 IO would
  need a second pipeline output and a second backend path for one saving.
- **Softmax and LayerNormalization** (``FP32_OPS``): a sum of exponentials and a variance over
  hundreds of values, where fp16's 10-bit mantissa and 65504 ceiling are the known weak points
  (TensorRT's own builder warns about LayerNorm in fp16 and advises fp32 for it).
- **the OOD head** (training/ood.py, nodes under ``/ood_head/``): a squared Mahalanobis distance
  over hundreds of features reaches 1e4-1e5 for the far-out crops it exists to rank, beyond fp16's
  largest number. The features it reads are cast back to fp32 at its input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: operator types kept in fp32 inside an fp16 graph (see the module docstring)
FP32_OPS: tuple[str, ...] = ("Softmax", "LayerNormalization")
#: element types, from onnx.TensorProto
_FLOAT, _FLOAT16 = 1, 10


@dataclass(frozen=True)
class Fp16Record:
    """What the conversion did, for the model card (``training.fp16``)."""

    io: str = "float32 input and outputs, Cast to/from float16 at the graph's edges"
    fp32_ops: tuple[str, ...] = FP32_OPS
    fp32_nodes: dict[str, int] = field(default_factory=dict)  # op type -> nodes left in fp32
    fp16_initializers: int = 0
    fp32_initializers: int = 0  # weights only fp32 nodes read (e.g. LayerNorm's scale, the OOD head)
    converter: str = "onnxruntime.transformers.float16.convert_float_to_float16"

    def as_card(self) -> dict:
        return {"io": self.io, "fp32_ops": list(self.fp32_ops), "fp32_nodes": dict(self.fp32_nodes),
                "fp16_initializers": self.fp16_initializers, "fp32_initializers": self.fp32_initializers,
                "converter": self.converter}


def _float16_module():
    """ONNX Runtime's converter. Importing ``onnxruntime.transformers`` appends its own folder to
    ``sys.path``, and must be left so: its modules import each other by bare name, and
    ``onnxruntime.quantization`` (the int8 export) imports one of them later in the same process."""
    from onnxruntime.transformers import float16

    return float16


def to_fp16(fp32_path: Path, out: Path, fp32_ops: tuple[str, ...] = FP32_OPS) -> Fp16Record:
    """Write the fp16 version of the fp32 ONNX ``fp32_path`` to ``out``; returns what it did."""
    import onnx

    from bmengine.training.ood import head_nodes

    float16 = _float16_module()
    model = onnx.load(str(fp32_path))
    head = head_nodes(model.graph)
    blocked = set(fp32_ops)
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(float16.DEFAULT_OP_BLOCK_LIST) + sorted(blocked),
        node_block_list=head)
    problems = fp16_problems(converted)
    if problems:
        raise ValueError(f"{fp32_path}: the fp16 conversion is not usable: {'; '.join(problems)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    onnx.save(converted, str(tmp))
    tmp.replace(out)
    kept: dict[str, int] = {}
    head_set = set(head)
    for node in converted.graph.node:
        if node.op_type in blocked or node.name in head_set:
            kept[node.op_type] = kept.get(node.op_type, 0) + 1
    types = [init.data_type for init in converted.graph.initializer]
    return Fp16Record(fp32_ops=tuple(fp32_ops), fp32_nodes=dict(sorted(kept.items())),
                      fp16_initializers=types.count(_FLOAT16), fp32_initializers=types.count(_FLOAT))


def fp16_problems(model) -> list[str]:
    """Why ``model`` (an onnx ModelProto) is not an fp16 export the engine can run, [] if it is:
    its IO must be float32 (what the decoder emits and every backend feeds) and its weights
    mostly float16 (a file with no fp16 weight is an fp32 file with the wrong card)."""
    graph = model.graph
    problems = [f"{kind} {v.name!r} is {_type_name(v.type.tensor_type.elem_type)}, not float32"
                for kind, values in (("input", graph.input), ("output", graph.output)) for v in values
                if v.type.tensor_type.elem_type != _FLOAT]
    types = [init.data_type for init in graph.initializer]
    if types.count(_FLOAT16) == 0:
        problems.append("no float16 weights (this is an fp32 graph)")
    elif types.count(_FLOAT) > types.count(_FLOAT16):
        problems.append(f"{types.count(_FLOAT)} float32 weights against {types.count(_FLOAT16)} float16 ones")
    return problems


def _type_name(elem_type: int) -> str:
    import onnx

    return onnx.TensorProto.DataType.Name(elem_type).lower()


def fp16_path_for(fp32_path: Path) -> Path:
    """``m.onnx`` -> ``m_fp16.onnx`` (beside it, as the int8 export is ``m_int8.onnx``)."""
    return fp32_path.with_name(fp32_path.stem + "_fp16.onnx")


def write_fp16_bundle(fp32_path: Path, out: Path | None = None) -> Path:
    """The fp16 file and its card from an exported fp32 ONNX and its card.

    The card is the fp32 one with precision ``fp16``, its own sha256 and the conversion record;
    the fp32 validation numbers move to ``metrics.fp32_validation`` (these weights were not scored
    here). Calibration and OOD threshold stay the fp32 model's: ``bmengine export --fp16`` re-fits
    both on the fp16 model's own outputs."""
    from bmengine.engine.model.card import load_card, sha256_of, write_card

    card = load_card(fp32_path)
    if card.precision != "fp32":
        raise ValueError(f"{fp32_path}: its card says {card.precision}; the fp16 model is made from the fp32 export")
    out = out or fp16_path_for(fp32_path)
    record = to_fp16(fp32_path, out)
    validation = card.metrics.get("validation")
    card.metrics = {"fp32_validation": {k: validation[k] for k in ("accuracy", "macro_f1", "per_class_f1")
                                        if k in validation}} if validation else {}
    card.name = f"{card.name}-fp16"
    card.precision = "fp16"
    card.training = {**card.training, "fp16": record.as_card()}
    card.weights_file, card.weights_sha256 = out.name, sha256_of(out)
    write_card(card, out)
    return out
