"""The shared DALI crop pipeline, on the CPU (the GPU variant is the same definition)."""

import io

import numpy as np
import pytest
from PIL import Image

from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec
from conftest import pbc_files

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pipe(**kw):
    return CropPipeline(PipelineSpec(resize=72, crop=64, mean=MEAN, std=STD, batch_size=16, **kw))


def test_decodes_real_jpegs_to_normalised_chw():
    crops = [f.read_bytes() for f in pbc_files("neutrophil", 6)]
    batch, good, errors, _ = _pipe().decode(crops)
    assert batch.shape == (6, 3, 64, 64) and batch.dtype == np.float32
    assert good == list(range(6)) and errors == [None] * 6
    # normalised: centred near 0 with unit-ish spread, not 0..255
    assert -3 < batch.mean() < 3 and 0.2 < batch.std() < 3


def test_matches_a_pil_reference_within_resampling_noise():
    crop = pbc_files("eosinophil", 1)[0]
    batch, _ = _pipe().decode_to_numpy([crop.read_bytes()])
    img = Image.open(crop).convert("RGB").resize((72, 72), Image.BILINEAR)
    ref = np.asarray(img, dtype=np.float32)[4:68, 4:68] / 255.0
    ref = ((ref - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
    assert np.abs(batch[0] - ref).mean() < 0.15


def test_bad_crops_are_named_and_good_ones_kept():
    crops = [f.read_bytes() for f in pbc_files("lymphocyte", 3)]
    truncated = crops[1][: len(crops[1]) // 3]
    batch, good, errors, _ = _pipe().decode([crops[0], truncated, crops[2], b"not an image", b""])
    assert good == [0, 2] and batch.shape[0] == 2
    assert "JPEG truncated" in errors[1]
    assert "not a JPEG, PNG or TIFF" in errors[3]
    assert errors[4] == "empty crop (0 bytes)"
    # the pipeline keeps working after a failure
    again, good_again, _, _ = _pipe().decode(crops)
    assert good_again == [0, 1, 2]


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_png_and_tiff_decode_like_the_jpeg(fmt):
    jpeg = pbc_files("monocyte", 1)[0]
    buffer = io.BytesIO()
    Image.open(jpeg).convert("RGB").save(buffer, format=fmt)
    pipe = _pipe()
    from_jpeg, _ = pipe.decode_to_numpy([jpeg.read_bytes()])
    other, errors = pipe.decode_to_numpy([buffer.getvalue()])
    assert errors == [None]
    assert np.abs(from_jpeg - other).mean() < 0.05  # lossless copy of the decoded JPEG


def test_uint8_mode_for_the_trainer_cache():
    batch, errors = CropPipeline(PipelineSpec(80, 80, MEAN, STD, normalize=False, batch_size=4)).decode_to_numpy(
        [f.read_bytes() for f in pbc_files("platelet", 2)])
    assert batch.shape == (2, 80, 80, 3) and batch.dtype == np.uint8 and batch.max() > 100


def test_gpu_pipeline_without_a_gpu_fails_clearly():
    from bmengine.engine.doctor import check

    if check("cuda").ok:
        pytest.skip("a GPU is present; this checks the no-GPU message")
    with pytest.raises(RuntimeError, match="CUDA"):
        _pipe(device="gpu").decode([pbc_files("basophil", 1)[0].read_bytes()])


def test_hue_mapping_in_dali_matches_the_numpy_reference():
    from bmengine.engine.preprocess.hue import hue_map_numpy

    blobs = [f.read_bytes() for cls in ("monocyte", "eosinophil") for f in pbc_files(cls, 3)]
    spec = dict(resize=64, crop=64, mean=MEAN, std=STD, normalize=False, batch_size=8)
    plain, _ = CropPipeline(PipelineSpec(**spec)).decode_to_numpy(blobs)
    mapped, _ = CropPipeline(PipelineSpec(**spec, hue_range=(125.0, 155.0))).decode_to_numpy(blobs)
    diff = np.abs(hue_map_numpy(plain, 125, 155).astype(int) - mapped.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.05  # float rounding at .5 only
    rgb = mapped.reshape(-1, 3).astype(float) / 255
    mx, mn = rgb.max(axis=1), rgb.min(axis=1)
    coloured = (mx - mn) > 0.1
    r, g, b = rgb[coloured].T
    c = (mx - mn)[coloured]
    assert np.all(np.isclose(mx[coloured], g, atol=0.02))  # 125-155 degrees: green is the largest channel
    hue = 60 * ((b - r) / c + 2)
    assert hue.min() > 120 and hue.max() < 160


def test_identity_hue_range_changes_nothing():
    from bmengine.engine.preprocess.hue import hue_map_numpy

    plain, _ = CropPipeline(PipelineSpec(64, 64, MEAN, STD, normalize=False, batch_size=4)).decode_to_numpy(
        [f.read_bytes() for f in pbc_files("ig", 2)])
    assert np.array_equal(hue_map_numpy(plain, 0, 360), plain)
