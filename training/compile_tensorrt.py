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
- the fp16 export (``bmengine export --fp16``, training/fp16.py) gives fp16 where the file is fp16
  and fp32 where it kept fp32 (IO, Softmax, LayerNorm, the OOD head).

This is the ONNX route (``bmengine compile model.onnx``); training/compile_torch_tensorrt.py is the
route from a checkpoint (``bmengine compile CKPT.pt``). Both write the plan and its card through
``write_plan``, so the backend cannot tell them apart.

Never run on this project's machines (no GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bmengine.engine.model.card import ModelCard, load_card, sha256_of, write_card

#: TensorRT releases this code is written against (pyproject's [gpu] pin says the same)
SUPPORTED_TENSORRT = ">=10.8,<12"


@dataclass(frozen=True)
class CompileConfig:
    """One config for both routes: ``source`` is the .onnx (this module) or the .pt (torch-tensorrt)."""

    source: Path
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
    if precision == "fp16":
        from bmengine.training.fp16 import fp16_problems

        if problems := fp16_problems(model):
            raise CompileError(f"{path}: its card says fp16 but {'; '.join(problems)}; re-export it with "
                               "`bmengine export --fp16`")
        return model.SerializeToString(), "fp16, strongly typed"
    raise CompileError(f"{path}: precision {precision!r} cannot be compiled; compile the fp32, fp16 or int8 export")


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise CompileError(f"TensorRT is not installed ({exc}); `pip install 'bmengine[gpu]'` on a GPU machine") from None
    return trt


def check_batches(cfg: CompileConfig) -> None:
    if not 1 <= cfg.opt_batch <= cfg.max_batch:
        raise CompileError(f"--opt-batch {cfg.opt_batch} must be between 1 and --max-batch {cfg.max_batch}")


def gpu_identity(device_id: int) -> dict:
    """Name and compute capability of the GPU the plan is built on (recorded in its card)."""
    from bmengine.engine.backends import cuda_runtime as cuda

    try:
        cuda.check(cuda.runtime().cudaSetDevice(device_id))
        return cuda.device_identity(device_id)
    except (cuda.CudaUnavailableError, RuntimeError) as exc:
        raise CompileError(f"no usable GPU {device_id}: {exc}") from None


def write_plan(plan: bytes, card: ModelCard, cfg: CompileConfig, identity: dict, trt_version: str, precision: str,
               compiled_from: dict, **tensorrt: object) -> Path:
    """Write the engine atomically and its card: the source card with the plan's file, sha256,
    what it was compiled from and the ``tensorrt`` record the backend checks (GPU, compute
    capability, TensorRT version) beside precision and batch limits; ``tensorrt`` adds to it."""
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = cfg.out.with_name(cfg.out.name + ".partial")
    tmp.write_bytes(bytes(plan))
    tmp.replace(cfg.out)
    card.architecture = {**card.architecture, "compiled_from": compiled_from,
                         "tensorrt": {"version": trt_version, **identity, "precision": precision,
                                      "strongly_typed": True, "max_batch": cfg.max_batch, "opt_batch": cfg.opt_batch,
                                      **tensorrt}}
    card.weights_file, card.weights_sha256 = cfg.out.name, sha256_of(cfg.out)
    write_card(card, cfg.out)
    return cfg.out


def compile_engine(cfg: CompileConfig) -> Path:
    """The ONNX route: parse the exported file, build a strongly typed engine, write plan + card."""
    trt = import_tensorrt()
    check_batches(cfg)
    card = load_card(cfg.source)
    graph, precision = prepared_onnx(cfg.source, card.precision)
    identity = gpu_identity(cfg.device_id)
    size = card.preprocessing.crop
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CompileError(f"{cfg.source}: TensorRT cannot parse it: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * (1 << 30)))
    input_name = network.get_input(0).name
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, 3, size, size), (cfg.opt_batch, 3, size, size), (cfg.max_batch, 3, size, size))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise CompileError(f"{cfg.source}: TensorRT failed to build an engine (see the log above)")
    return write_plan(plan, card, cfg, identity, trt.__version__, precision,
                      {"file": cfg.source.name, "sha256": card.weights_sha256, "route": "onnx"})
