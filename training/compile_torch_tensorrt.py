"""Checkpoint (``.pt``) -> TensorRT engine (``.plan``) with torch-tensorrt, skipping ONNX.

The second route to a plan (``bmengine compile CKPT.pt --out m.plan``), for when an ONNX graph
gives TensorRT's parser trouble: torch-tensorrt converts the PyTorch graph itself. It writes the
same ``.plan`` + card as the ONNX route (training/compile_tensorrt.py ``write_plan``), which the
TensorRT backend runs unchanged.

The checkpoint is read as the torch backend reads it (engine/backends/torch_backend.py): with
torch's ``weights_only`` unpickler, the architecture from the card beside the ``.pt`` (or, for a
trainer checkpoint without one, from the plain-data ``model_spec`` the trainer wrote), never from
objects in the file.

API, checked against torch-tensorrt 2.14.0's released source (the PyPI wheel; the same files are
py/torch_tensorrt/ in github:pytorch/TensorRT):

- ``torch_tensorrt.convert_method_to_trt_engine(module, arg_inputs=[...], ir="dynamo", **kwargs)
  -> bytes`` (``_compile.py``): with ir="dynamo" it traces the module (``dynamo/_tracer.py``
  ``trace``: ``torch.export.export`` with the batch axis a ``Dim`` between the Input's min and
  max) and passes the program to ``convert_exported_program_to_serialized_trt_engine``
  (``dynamo/_compiler.py``), whose result is "Serialized TensorRT engine, can either be saved to a
  file or deserialized via TensorRT APIs": what the backend's ``deserialize_cuda_engine`` reads.
- ``torch_tensorrt.Input(min_shape=, opt_shape=, max_shape=, dtype=torch.float32)`` (``_Input.py``):
  the optimisation profile, min 1 / opt / max batch as in the ONNX route.
- kwargs of ``convert_exported_program_to_serialized_trt_engine``: ``device``,
  ``workspace_size``, and ``arg_input_binding_names=("image",)`` / ``output_binding_names="logits"``
  (pytrees shaped like the forward's args and its output, ``_resolve_pytree_binding_names``), so
  the engine's IO is named as the ONNX route's. Its network is strongly typed
  (``dynamo/conversion/_TRTInterpreter.py``: ``NetworkDefinitionCreationFlag.STRONGLY_TYPED``);
  the 2.14 dynamo path takes no ``enabled_precisions``: the precision is the module's, fp32, with
  TF32 allowed (``disable_tf32`` False by default).

torch-tensorrt 2.14.0 requires torch >=2.14,<2.15 and tensorrt-cu13 >=11.1,<11.2 (its wheel's
metadata), inside pyproject's [gpu] pins (torch 2.14.1, tensorrt-cu13 >=10.8,<12).

The plan has no ``ood_score``: the Mahalanobis head is added at ONNX export (training/ood.py), it
is not in the checkpoint. Its card has no ``ood`` record, so the backend reports no OOD score
(no crop is flagged unknown); compile the ``.onnx`` export for one.

Never run on this project's machines (no GPU, no TensorRT).
"""

from __future__ import annotations

from pathlib import Path

from bmengine.engine.model.card import ModelCard, card_path_for, load_card, sha256_of
from bmengine.training.compile_tensorrt import CompileConfig, CompileError, check_batches, gpu_identity, write_plan

INPUT_NAME, OUTPUT_NAME = "image", "logits"  # the ONNX export's names (training/export.py export_onnx)
PRECISION = "fp32, TF32 allowed (torch-tensorrt)"
NO_OOD = ("none: the OOD head is added at ONNX export and is not in the checkpoint; "
          "compile the .onnx export for an OOD score")


def import_torch_tensorrt():
    """torch_tensorrt, or a CompileError naming the extra. Its import fails with an ImportError
    without the package and with an OSError/RuntimeError without TensorRT's libraries."""
    try:
        import torch_tensorrt
    except (ImportError, OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CompileError(f"torch-tensorrt is not usable here ({reason}); compiling a checkpoint needs it: "
                           "`pip install 'bmengine[gpu]'` on a GPU machine, or compile the model's .onnx export") from None
    return torch_tensorrt


def checkpoint_model(path: Path) -> tuple[object, ModelCard]:
    """The checkpoint's network (eval mode, fp32, on the CPU) and the card its plan starts from."""
    from bmengine.engine.backends.torch_backend import load_weights, spec_from_card
    from bmengine.engine.model.card import ModelCardError
    from bmengine.engine.model.networks import create_model

    if card_path_for(path).is_file():  # a bundle the torch backend runs: its card names the architecture
        card = load_card(path)
        weights = load_weights(path)
    else:  # a trainer checkpoint (RUN/checkpoints/best.pt): its own plain-data record does
        from bmengine.training.checkpoint import load_checkpoint
        from bmengine.training.export import EXPORT_KEYS, checkpoint_card

        state = load_checkpoint(path, require=("model", "model_spec", *EXPORT_KEYS))
        card, weights = checkpoint_card(state, path, path.stem), state["model"]
    spec = spec_from_card(card, path)
    try:
        model = create_model(spec).eval()
        model.load_state_dict(weights)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise ModelCardError(f"{path}: weights do not fit the architecture its card names ({spec}): "
                             f"{str(exc).splitlines()[0]}") from None
    return model.float(), card


def compile_checkpoint(cfg: CompileConfig) -> Path:
    """The torch-tensorrt route: checkpoint -> serialized engine -> plan + card (``write_plan``)."""
    check_batches(cfg)
    torch_tensorrt = import_torch_tensorrt()
    import tensorrt as trt  # torch_tensorrt imported it already
    import torch

    model, card = checkpoint_model(cfg.source)
    identity = gpu_identity(cfg.device_id)
    device = torch.device("cuda", cfg.device_id)
    size = card.preprocessing.crop
    profile = torch_tensorrt.Input(min_shape=(1, 3, size, size), opt_shape=(cfg.opt_batch, 3, size, size),
                                   max_shape=(cfg.max_batch, 3, size, size), dtype=torch.float32)
    try:
        plan = torch_tensorrt.convert_method_to_trt_engine(
            model.to(device), arg_inputs=[profile], ir="dynamo", device=device,
            workspace_size=int(cfg.workspace_gib * (1 << 30)),
            arg_input_binding_names=(INPUT_NAME,), output_binding_names=OUTPUT_NAME)
    except Exception as exc:  # torch.export and the converters raise many kinds; the log has the details
        raise CompileError(f"{cfg.source}: torch-tensorrt could not build an engine ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}); try the ONNX route "
                           "(`bmengine export`, then `bmengine compile model.onnx`)") from None
    card.ood = {}  # the plan has no ood_score output (module docstring)
    card.precision = "fp32"
    return write_plan(plan, card, cfg, identity, trt.__version__, PRECISION,
                      {"file": cfg.source.name, "sha256": sha256_of(cfg.source), "route": "torch-tensorrt",
                       "torch_tensorrt": torch_tensorrt.__version__},
                      ood=NO_OOD)
