"""ONNX Runtime on the CPU: fp32 or int8 (QDQ) models; the backend of any machine."""

from __future__ import annotations

import numpy as np

from bmengine.engine.backends.base import Backend, ModelIO, softmax


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    device = "cpu"

    def __init__(self, model_path, card, options):
        super().__init__(model_path, card, options)
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = options.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Decoding runs beside inference: idle ORT threads must sleep, not spin on the shared cores.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for corrupt files
            from bmengine.engine.model.card import ModelCardError

            raise ModelCardError(f"{model_path}: ONNX Runtime cannot load it: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name

    def io(self) -> ModelIO:
        in_shape = self.session.get_inputs()[0].shape
        out_shape = self.session.get_outputs()[0].shape
        size = in_shape[-1] if isinstance(in_shape[-1], int) else None
        classes = out_shape[-1] if isinstance(out_shape[-1], int) else None
        return ModelIO(size, classes)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        (logits,) = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return softmax(logits)
