"""ONNX -> TensorRT engine (``.plan``) with its own model card. Needs a GPU and the [gpu] extra.

An engine is specific to the GPU model and TensorRT version that built it, so it is compiled on
the machine that will run it (``bmengine compile model.onnx --out model.plan``), and its card
records both; the backend refuses a plan from another GPU or TensorRT version.

The network is **strongly typed** (``1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED``): every
tensor's type comes from the ONNX graph. The BuilderFlag.FP16/INT8 route is deprecated since
TensorRT 10.12 and gone in 11, where strong typing is the only mode (TensorRT Python API,
Builder.html, NetworkDefinitionCreationFlag). So the precision is the file's:

- the int8 export (symmetric Q/DQ, engine/model/qdq.py) gives int8 where the Q/DQ nodes are and
  fp32 elsewhere; its int32 bias DequantizeLinear nodes are folded to fp32 first;
- the fp32 export gives fp32, with TF32 tensor-core math allowed (BuilderFlag.TF32, on by default);
- an fp16 plan needs an fp16 ONNX, which the export does not write yet: refused with that reason.

Never run on this project's machines (no GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bmengine.engine.model.card import load_card, sha256_of, write_card

#: TensorRT releases this code is written against (pyproject's [gpu] pin says the same)
SUPPORTED_TENSORRT = ">=10.8,<12"


@dataclass(frozen=True)
class CompileConfig:
    onnx: Path
    out: Path
    max_batch: int = 512
    opt_batch: int = 256  # the batch `bmengine run --batch-size` should use on this GPU
    workspace_gib: float = 4.0
    device_id: int = 0


class CompileError(RuntimeError):
    pass


def prepared_onnx(path: Path, precision: str) -> tuple[bytes, str]:
    """The graph TensorRT will parse, and the precision it will run at; refuses what it cannot take."""
    import onnx

    from bmengine.engine.model.qdq import fold_bias_dequantize, tensorrt_qdq_problems

    model = onnx.load(str(path))
    if precision == "int8":
        problems = tensorrt_qdq_problems(model.graph)
        if problems:
            listed = "; ".join(f"{p.node}: {p.problem}" for p in problems[:5])
            raise CompileError(f"{path}: {len(problems)} Q/DQ node(s) TensorRT cannot take ({listed}); re-export it "
                               "with this version's `bmengine export` (symmetric int8)")
        return fold_bias_dequantize(model).SerializeToString(), "int8 (Q/DQ) + fp32, TF32 allowed"
    if precision == "fp32":
        return model.SerializeToString(), "fp32, TF32 allowed"
    raise CompileError(f"{path}: a {precision} ONNX cannot be compiled yet; compile the fp32 or int8 export")


def compile_engine(cfg: CompileConfig) -> Path:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise CompileError(f"TensorRT is not installed ({exc}); `pip install 'bmengine[gpu]'` on a GPU machine") from None
    from bmengine.engine.backends import cuda_runtime as cuda

    if not 1 <= cfg.opt_batch <= cfg.max_batch:
        raise CompileError(f"--opt-batch {cfg.opt_batch} must be between 1 and --max-batch {cfg.max_batch}")
    card = load_card(cfg.onnx)
    graph, precision = prepared_onnx(cfg.onnx, card.precision)
    try:
        cuda.check(cuda.runtime().cudaSetDevice(cfg.device_id))
        identity = cuda.device_identity(cfg.device_id)
    except (cuda.CudaUnavailableError, RuntimeError) as exc:
        raise CompileError(f"no usable GPU {cfg.device_id}: {exc}") from None
    size = card.preprocessing.crop
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CompileError(f"{cfg.onnx}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * (1 << 30)))
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
    card.architecture = {**card.architecture,
                         "compiled_from": {"file": cfg.onnx.name, "sha256": card.weights_sha256},
                         "tensorrt": {"version": trt.__version__, **identity, "precision": precision,
                                      "strongly_typed": True, "max_batch": cfg.max_batch, "opt_batch": cfg.opt_batch}}
    card.weights_file, card.weights_sha256 = cfg.out.name, sha256_of(cfg.out)
    write_card(card, cfg.out)
    return cfg.out
