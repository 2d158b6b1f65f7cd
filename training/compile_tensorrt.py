"""ONNX -> TensorRT engine (``.plan``) with its own model card. Needs a GPU and the [gpu] extra.

An engine is specific to the GPU model and TensorRT version that built it, so it is compiled on
the machine that will run it: ``bmengine compile model.onnx --out model.plan``. The int8 ONNX
carries explicit Q/DQ nodes, which TensorRT honours (explicit quantisation): no second
calibration is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bmengine.engine.model.card import load_card, sha256_of, write_card


@dataclass(frozen=True)
class CompileConfig:
    onnx: Path
    out: Path
    fp16: bool = True
    max_batch: int = 256
    opt_batch: int = 128
    workspace_gib: float = 4.0


class CompileError(RuntimeError):
    pass


def compile_engine(cfg: CompileConfig) -> Path:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise CompileError(f"TensorRT is not installed ({exc}); `pip install 'bmengine[gpu]'` on a GPU machine") from None
    card = load_card(cfg.onnx)
    size = card.preprocessing.crop
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(cfg.onnx.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CompileError(f"{cfg.onnx}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * (1 << 30)))
    if cfg.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if card.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # honour the Q/DQ nodes of the int8 export
    input_name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, 3, size, size), (cfg.opt_batch, 3, size, size), (cfg.max_batch, 3, size, size))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CompileError(f"{cfg.onnx}: TensorRT failed to build an engine (see the log above)")
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.out.with_name(cfg.out.name + ".partial")
    tmp.write_bytes(bytes(plan))
    tmp.replace(cfg.out)
    card.architecture = {**card.architecture, "compiled_from": {"file": cfg.onnx.name, "sha256": card.weights_sha256},
                         "tensorrt": trt.__version__, "max_batch": cfg.max_batch}
    card.precision = card.precision if card.precision == "int8" else ("fp16" if cfg.fp16 else "fp32")
    card.weights_file, card.weights_sha256 = cfg.out.name, sha256_of(cfg.out)
    write_card(card, cfg.out)
    return cfg.out
