"""The shipped int8 model gives the same answer on any x86 CPU.

Without VNNI, ONNX Runtime's fast uint8 x int8 kernels add pairs of products into a saturating
int16 (engine/backends/x86_int8.py). On such a CPU (an AMD EPYC with AVX2
only, 2026-11-27) the shipped default disagreed with its own Q/DQ arithmetic on 7 of 50
such crops, most of them another lab's. The reference here runs the same file with ONNX Runtime's Q/DQ
fusion off: every QuantizeLinear/DequantizeLinear as written, the convolutions in float, so nothing
can saturate. On a VNNI CPU this checks that ONNX Runtime's own kernels are exact, as the engine
assumes there; on the others it fails when the backend's sessions lose the exact ones.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from bmengine.engine.assets import DEFAULT_MODEL
from bmengine.engine.backends import load_backend
from bmengine.engine.backends.onnxruntime_backend import _model_for_cpu
from bmengine.engine.backends.x86_int8 import EXACT_INT8_ON_X86, int8_dot_product
from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec
from conftest import ASSETS, DATA, PBC


def _crops(preprocessing) -> np.ndarray:
    """Every 700th PBC crop and every 12th wbc_zheng crop (both labs): 52 real crops, decoded by the engine."""
    other_labs = [f for f in sorted((DATA / "wbc_zheng").glob("*/*/*.png")) if "_masks" not in f.parts]
    files = sorted(PBC.glob("*/*.jpg"))[::700] + other_labs[::12]
    batch, errors = CropPipeline(PipelineSpec.from_preprocessing(preprocessing, batch_size=len(files))).decode_to_numpy(
        [f.read_bytes() for f in files])
    assert not any(errors) and len(batch) >= 40
    return batch


def _qdq_as_written(model_path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(_model_for_cpu(model_path), options, providers=["CPUExecutionProvider"])


def test_the_backend_computes_the_int8_model_as_written():
    backend = load_backend(DEFAULT_MODEL)
    batch = _crops(backend.card.preprocessing)
    reference = _qdq_as_written(DEFAULT_MODEL).run(["logits"], {"image": batch})[0]
    got = backend.forward(batch).logits
    scale = np.abs(reference).max()
    # the fused kernels round their requantisation differently: 0.34 logits at most seen, on a scale of 14
    assert np.abs(got - reference).max() < 0.08 * scale, np.abs(got - reference).max()
    assert (got.argmax(1) == reference.argmax(1)).all()
    assert "int8_kernels" in backend.runtime_info()  # run.json says which kernels computed it
    assert load_backend(ASSETS / "tiny.onnx").runtime_info() == {}  # fp32: nothing to say


def test_the_precision_entry_is_one_onnx_runtime_knows():
    """ONNX Runtime ignores config keys it does not know, so a renamed key would silently bring the
    saturation back: the entry must be in the installed runtime's own table of keys."""
    import onnxruntime.capi.onnxruntime_pybind11_state as native

    key, value = EXACT_INT8_ON_X86
    assert key.encode() in open(native.__file__, "rb").read()
    assert value == "1"


def test_the_cpus_int8_instruction_is_read_from_its_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    lines = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 {extra}\n"
    for extra, expected in (("", "none"), ("avx512f avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni")):
        cpuinfo.write_text(lines.format(extra=extra) * 2)
        assert int8_dot_product(cpuinfo) == expected
    assert int8_dot_product(tmp_path / "not-linux") == "unknown"
    cpuinfo.write_text("processor\t: 0\n")
    assert int8_dot_product(cpuinfo) == "unknown"
