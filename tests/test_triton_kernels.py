"""Issue 13, item 7: the Triton kernels, run here on the CPU by Triton's interpreter
(``TRITON_INTERPRET=1``) and compared with their NumPy references and with the engine's own
CPU path, on real PBC crops decoded by the engine's DALI pipeline, clean and damaged.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels are decorated
torch = pytest.importorskip("torch", reason="the kernels' tensors are torch tensors: needs the [gpu] or [train] extra")
pytest.importorskip("triton", reason="needs Triton (the [gpu] extra, or torch's own dependency)")

from conftest import pbc_files  # noqa: E402

# Triton's interpreter runs each program in Python (about 0.05-0.25 s): small images keep these tests
# to seconds. The kernels take any size; the engine's QC images are 144 px.
SIZE, CROP = 72, 64
QC_SIZE = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _kernels(name: str):
    """The kernel module, decorated under the interpreter even if something imported it earlier."""
    module = importlib.import_module(f"bmengine.kernels.{name}")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is set to something else than 1 in this environment")
    return importlib.reload(module)


def _decode(blobs: list[bytes], hue_range=None, qc_size: int = SIZE):
    """(the engine's float32 NCHW network input, the resized uint8 NHWC QC images) of real crops;
    with ``qc_size=SIZE`` the QC images are the very images the network input is cropped from."""
    from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec

    spec = PipelineSpec(SIZE, CROP, MEAN, STD, qc_output=True, qc_size=qc_size, hue_range=hue_range,
                        batch_size=len(blobs))
    decoded = CropPipeline(spec).decode(blobs)
    assert decoded.good == list(range(len(blobs))), decoded.errors
    return np.asarray(decoded.pixels), decoded.qc


@pytest.fixture(scope="module")
def crops() -> list[bytes]:
    """Three real crops of three classes, and three damaged the ways archives damage JPEGs."""
    from bmengine.engine.qc.damage import foreign_band, shifted_blocks, truncate_grey

    clean = [pbc_files(cls, 1, offset=40)[0].read_bytes() for cls in ("neutrophil", "lymphocyte", "eosinophil")]
    rng = np.random.default_rng(7)
    damaged = [truncate_grey(clean[0], rng), shifted_blocks(clean[2], rng), foreign_band(clean[1], rng, clean[2])]
    return clean + damaged


@pytest.fixture(scope="module")
def profiled(crops):
    """(QC images of the crops, the kernel's profiles of them): the interpreter runs it once."""
    kernels = _kernels("garbled_profiles")
    _, images = _decode(crops, qc_size=QC_SIZE)
    return images, {k: v.numpy() for k, v in kernels.garbled_profiles(torch.from_numpy(images)).items()}


def test_garbled_profiles_kernel_equals_the_numpy_profiles(profiled):
    kernels = _kernels("garbled_profiles")
    images, got = profiled
    want = kernels.garbled_profiles_reference(images)
    assert got.keys() == want.keys()
    for name in ("bumpiest", "shared_shift"):  # integers and halves of integers: exact
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name in ("row_change", "column_change", "level", "row_stats"):  # float32 sums in another order
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-3, err_msg=name)


def test_qc_verdicts_from_the_kernel_profiles_equal_the_cpu_checks(profiled):
    from bmengine.engine.qc import QcStats, quality_flags
    from bmengine.engine.qc.garbled import garbled, garbled_from_scores, scores_from_profiles

    images, profiles = profiled
    flags = garbled_from_scores(scores_from_profiles(profiles), images.shape[1:3])
    np.testing.assert_array_equal(flags, garbled(images))
    assert flags[3:].any() and not flags[:3].any()  # damage is seen, the clean crops pass

    # every number the checks read, from the kernel's per-row sums or from the images
    gpu, cpu = QcStats.from_row_profiles(profiles, images.shape[1:3]), QcStats.from_images(images)
    for name in ("brightness_mean", "clipped_fraction", "chroma"):
        np.testing.assert_allclose(getattr(gpu, name), getattr(cpu, name), rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(gpu.brightness_std, cpu.brightness_std, rtol=1e-3)
    for name in cpu.garbled:
        np.testing.assert_allclose(gpu.garbled[name], cpu.garbled[name], rtol=1e-4, err_msg=name)
    shapes = [(360, 363, 3)] * len(images)  # PBC's size: only the pixel checks can differ
    assert quality_flags(gpu, shapes) == quality_flags(images, shapes)


def test_profiles_kernel_refuses_a_batch_it_cannot_score():
    kernels = _kernels("garbled_profiles")
    with pytest.raises(ValueError, match="uint8 NHWC"):
        kernels.garbled_profiles(torch.zeros((2, 16, 16, 3), dtype=torch.float32))
    with pytest.raises(ValueError, match="too small"):
        kernels.garbled_profiles(torch.zeros((2, 2, 16, 3), dtype=torch.uint8))


def test_crop_and_normalise_kernel_matches_the_engines_dali_input(crops):
    kernels = _kernels("hue_normalize")
    pixels, images = _decode(crops[:3])
    got = kernels.hue_normalize(torch.from_numpy(images), CROP, MEAN, STD).numpy()
    assert got.dtype == np.float16 and got.shape == pixels.shape == (3, 3, CROP, CROP)
    np.testing.assert_allclose(got.astype(np.float32), pixels, atol=4e-3)  # fp16 steps are 2e-3 near 2.2
    np.testing.assert_array_equal(got, kernels.hue_normalize_reference(images, CROP, MEAN, STD))


@pytest.mark.parametrize("hue_range", [(125.0, 155.0), (0.0, 360.0)])
def test_hue_mapping_kernel_matches_its_reference_and_the_dali_hue_pipeline(crops, hue_range):
    kernels = _kernels("hue_normalize")
    _, images = _decode(crops[:3])
    got = kernels.hue_normalize(torch.from_numpy(images), CROP, MEAN, STD, hue_range=hue_range).numpy().astype(np.float32)
    want = kernels.hue_normalize_reference(images, CROP, MEAN, STD, hue_range=hue_range).astype(np.float32)
    grey_level = 1.0 / (255 * min(STD))  # one 8-bit step after normalisation
    # float32 in another order can put a value on the other side of a rounding tie: one grey level
    # apart, for about 1% of the values here (DALI's operators differ from NumPy the same way)
    assert np.abs(got - want).max() <= grey_level + 4e-3
    assert np.mean(np.abs(got - want) > 4e-3) < 0.03
    dali, _ = _decode(crops[:3], hue_range=hue_range)  # the engine's own hue mapping (DALI operators)
    assert np.abs(got - dali).max() <= grey_level + 4e-3
    if hue_range != (0.0, 360.0):  # a real mapping changes the picture (the full circle keeps it)
        assert not np.allclose(got, _decode(crops[:3])[0], atol=0.05)
