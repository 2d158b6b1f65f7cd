"""ONNX Runtime on the CPU: fp32 or int8 (QDQ) models; the backend of any machine."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bmengine.engine.backends.base import Backend, ModelIO, Outputs
from bmengine.engine.backends.x86_int8 import EXACT_INT8_ON_X86, VNNI, fast_int8_is_exact, int8_dot_product


def session_options(exact_int8: bool | None = None):
    """The ``onnxruntime.SessionOptions`` every session of bmengine starts from (tests and tools
    that open a model themselves too): int8 computed exactly on any x86 CPU (x86_int8.py).
    ``exact_int8`` forces the exact-kernel entry on or off (benchmarks/int8_kernels.py compares)."""
    import onnxruntime as ort

    if exact_int8 is None:
        exact_int8 = not fast_int8_is_exact()
    so = ort.SessionOptions()
    if exact_int8:
        so.add_session_config_entry(*EXACT_INT8_ON_X86)
    return so


def engine_session_options(exact_int8: bool | None = None):
    """``session_options`` tuned for the engine's inference: one thread per run (the backend runs
    ``threads`` parts of each batch at once), no spinning, no memory pattern."""
    import onnxruntime as ort

    so = session_options(exact_int8)
    # Each batch is split into ``threads`` parts that run at once on one session, each part on
    # one thread: on 2 AMD EPYC cores 105 img/s against 81-88 for one run on 2 intra-op threads
    # (2026-11-25, the default int8 CoAtNet-0, batches of 64; ORT's run() is thread-safe).
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Decoding runs beside inference: idle ORT threads must sleep, not spin on the shared cores.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # No memory pattern: it pre-plans one block per input shape on top of the arena, +320 MB peak
    # for batches of 64 at 128 px, at no measured speed gain (2026-11-25, AMD EPYC 2 cores:
    # 86.1 img/s without, 84.8 with; peak 799 vs 1,123 MB). The arena stays: without it 68 img/s.
    so.enable_mem_pattern = False
    return so


def _model_for_cpu(model_path) -> str | bytes:
    """The file itself, or for an int8 (Q/DQ) model the same graph with uint8 activations, the
    type ONNX Runtime's x86 kernels fuse (engine/model/qdq.py: exact, and the file on disk stays
    the TensorRT-ready one)."""
    import onnx

    from bmengine.engine.model.qdq import unsigned_activations

    model = onnx.load(str(model_path))
    if not any(node.op_type == "QuantizeLinear" for node in model.graph.node):
        return str(model_path)
    return unsigned_activations(model).SerializeToString()


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    device = "cpu"
    # Small batches keep a CPU's caches warm: on 2 AMD EPYC cores (2026-11-25, ONNX Runtime int8,
    # each batch split into 2 single-threaded runs) the CoAtNet-0 default inferred 114.5 img/s at 16,
    # 109.4 at 32, 103.6 at 64, and a whole 4,000-crop archive ran 7% faster at 16 than at 64; the
    # RegNetX-3.2GF fast model barely cares (347 / 355 / 360 img/s).
    default_batch_size = 16

    def __init__(self, model_path, card, options):
        super().__init__(model_path, card, options)
        import onnxruntime as ort

        so = engine_session_options()
        self.parts = max(1, options.threads)
        model = _model_for_cpu(model_path)
        self.int8 = isinstance(model, bytes)  # a Q/DQ graph, rewritten for the CPU's kernels
        try:
            self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for corrupt files
            from bmengine.engine.model.card import ModelCardError

            raise ModelCardError(f"{model_path}: ONNX Runtime cannot load it: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name
        # outputs are read by name: the logits (the one output that is not the OOD score) and,
        # when the card names one, the OOD score; a model may carry outputs its card does not use
        outputs = [o.name for o in self.session.get_outputs()]
        self.ood_name = card.ood_output if card.ood_output in outputs else None
        self.logits_name = "logits" if "logits" in outputs else next(n for n in outputs if n != self.ood_name)
        self._fetch = [self.logits_name] + ([self.ood_name] if self.ood_name else [])
        self._pool = ThreadPoolExecutor(self.parts, thread_name_prefix="bmengine-ort") if self.parts > 1 else None

    def io(self) -> ModelIO:
        in_shape = self.session.get_inputs()[0].shape
        out_shape = next(o for o in self.session.get_outputs() if o.name == self.logits_name).shape
        size = in_shape[-1] if isinstance(in_shape[-1], int) else None
        classes = out_shape[-1] if isinstance(out_shape[-1], int) else None
        return ModelIO(size, classes, tuple(o.name for o in self.session.get_outputs()))

    def _run(self, part: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self._fetch, {self.input_name: np.ascontiguousarray(part, dtype=np.float32)})

    def forward(self, batch: np.ndarray) -> Outputs:
        batch = np.asarray(batch)
        if self._pool is None or len(batch) < 2 * self.parts:
            got = self._run(batch)
        else:
            runs = list(self._pool.map(self._run, np.array_split(batch, self.parts)))
            got = [np.concatenate([run[i] for run in runs]) for i in range(len(self._fetch))]
        ood = got[1].reshape(-1).astype(np.float32) if self.ood_name else None
        return Outputs(got[0], ood)

    def runtime_info(self) -> dict:
        """For an int8 model, which of ONNX Runtime's integer kernels computed it (both exact)."""
        if not self.int8:
            return {}
        vnni = int8_dot_product()
        if vnni in VNNI:
            return {"int8_kernels": f"onnxruntime's own ({vnni})"}
        return {"int8_kernels": f"onnxruntime's exact uint8 x uint8 ({'='.join(EXACT_INT8_ON_X86)}; no VNNI seen)"}

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        super().close()
