"""nvJPEG vs libjpeg-turbo (issue 13 item 9), the parts that run without a GPU: the threshold
re-derivation of benchmarks/decoder_parity.py, its comparison on two CPU decodes, the GPU
decoder's settings, and the decoder the export calibrates int8 on."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, pbc_files

SCRIPT = REPO / "benchmarks" / "decoder_parity.py"


@pytest.fixture(scope="module")
def parity():
    spec = importlib.util.spec_from_file_location("decoder_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_agreeing_threshold_is_the_nearest_one_outside_every_straddling_pair(parity):
    a = np.array([1.0, 2.9, 3.05, 5.0, 2.0])
    b = np.array([1.1, 3.2, 2.95, 5.2, 2.0])  # crops 1 and 2 straddle 3.0
    found = parity.agreeing_threshold(a, b, 3.0)
    assert found["disagree"] == [1, 2]
    assert found["candidates"] == [pytest.approx(2.9), 3.2]
    assert found["nearest"] == pytest.approx(2.9)
    for t in found["candidates"]:  # there, both decoders flag the same crops
        assert ((a > t) == (b > t)).all()
    assert parity.agreeing_threshold(a, b, 4.0) == {"disagree": [], "nearest": 4.0, "candidates": [4.0]}


def test_a_threshold_flagging_low_scores_is_re_derived_the_same_way(parity):
    a, b = np.array([4.8, 10.0, 5.3]), np.array([5.1, 10.0, 5.6])  # blank: flagged below 5
    found = parity.agreeing_threshold(a, b, 5.0, above=False)
    assert found["disagree"] == [0]
    for t in found["candidates"]:
        assert ((a < t) == (b < t)).all()
    assert found["candidates"] == [4.8, pytest.approx(5.1)]
    assert found["nearest"] == pytest.approx(5.1)  # 0.1 from 5, against 0.2


def test_two_cpu_decodes_agree_and_one_grey_level_of_noise_is_reported(parity):
    """The comparison on real crops, clean and damaged, with the CPU decoder on both sides (what
    can run here): everything agrees; then one side gets +-1 grey level (IDCT rounding's size)."""
    from bmengine.engine.qc import damage

    clean = [f.read_bytes() for f in pbc_files("neutrophil", 12, offset=60)]
    rng = np.random.default_rng(1)
    damaged = [damage.truncate_grey(clean[0], rng), damage.shifted_blocks(clean[1], rng)]
    checks = parity.numeric_checks()
    cpu = parity.decode(clean + damaged, 144, "cpu")
    same = parity.compare(cpu, cpu, checks)
    assert same["decoded_by_both"] == 14 and same["pixels"]["max_abs"] == 0
    assert same["verdicts"]["agree"] == 14 and all(not c["disagree_at_threshold"] for c in same["checks"].values())
    noise = np.random.default_rng(2)
    noisy = parity.Decodes([None if im is None else np.clip(im.astype(np.int16) + noise.integers(-1, 2, im.shape), 0, 255)
                            .astype(np.uint8) for im in cpu.images], cpu.errors, cpu.shapes)
    record = parity.compare(cpu, noisy, checks)
    assert record["pixels"]["max_abs"] == 1 and 0.5 < record["pixels"]["mean_abs"] < 0.8
    assert set(record["checks"]) == {"garbled.row_seam", "garbled.column_seam", "garbled.colour_step",
                                     "garbled.flat_rows", "blank", "overexposed", "underexposed", "not_colour"}
    assert record["checks"]["not_colour"]["score_abs_diff"]["max"] < 1.0


def test_the_benchmark_stops_with_the_reason_without_a_gpu():
    from bmengine.engine.backends.devices import cuda_device_count

    if cuda_device_count():
        pytest.skip("a GPU is here: tests/test_gpu.py runs the comparison")
    result = subprocess.run([sys.executable, str(SCRIPT), "--per-kind", "1", "--clean", "1"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 2 and "needs a CUDA GPU" in result.stderr


def test_the_gpu_decoder_upsamples_chroma_as_libjpeg_turbo_does():
    from bmengine.engine.preprocess.dali_pipeline import _decoder_args

    assert _decoder_args("gpu") == {"device": "mixed", "jpeg_fancy_upsampling": True}
    assert _decoder_args("cpu") == {"device": "cpu"}


def test_int8_calibration_crops_are_decoded_on_the_export_machines_decoder(tiny_model):
    """A GPU export calibrates on nvJPEG's pictures, a CPU export on libjpeg-turbo's (``auto``)."""
    pytest.importorskip("torch", reason="export needs the [train] extra")
    from bmengine.engine.backends.devices import cuda_device_count
    from bmengine.engine.model import load_card
    from bmengine.training.export import ExportConfig, resolve_decode_device
    from bmengine.training.quantize import CalibrationReader

    assert resolve_decode_device("auto") == ("gpu" if cuda_device_count() else "cpu")
    assert resolve_decode_device("cpu") == "cpu" and resolve_decode_device("gpu") == "gpu"
    with pytest.raises(ValueError, match="--decode-device 'tpu'"):
        ExportConfig(Path("c.pt"), Path("m.onnx"), decode_device="tpu")
    prep = load_card(tiny_model).preprocessing
    files = [str(f) for f in pbc_files("basophil", 4)]
    reader = CalibrationReader(files, prep, "image", batch_size=4, device="cpu")
    assert reader.pipeline.spec.device == "cpu"
    batch = reader.get_next()["image"]
    assert batch.shape == (4, 3, prep.crop, prep.crop) and batch.dtype == np.float32
    assert reader.get_next() is None
