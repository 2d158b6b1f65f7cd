"""The shared DALI crop pipeline, on the CPU (the GPU variant is the same definition)."""

import io

import numpy as np
import pytest
from PIL import Image

from bmengine.engine.preprocess.dali_pipeline import QC_SIZE, CropPipeline, PipelineSpec
from conftest import pbc_files

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _pipe(**kw):
    return CropPipeline(PipelineSpec(resize=72, crop=64, mean=MEAN, std=STD, batch_size=16, **kw))


def test_decodes_real_jpegs_to_normalised_chw():
    crops = [f.read_bytes() for f in pbc_files("neutrophil", 6)]
    decoded = _pipe().decode(crops)
    batch, good, errors = decoded.pixels, decoded.good, decoded.errors
    assert batch.shape == (6, 3, 64, 64) and batch.dtype == np.float32
    assert good == list(range(6)) and errors == [None] * 6
    # normalised: centred near 0 with unit-ish spread, not 0..255
    assert -3 < batch.mean() < 3 and 0.2 < batch.std() < 3


def _pil_reference(crop, resize: int = 72, crop_size: int = 64) -> np.ndarray:
    """PIL's decode, bilinear (triangle-filter) resize and centre crop, normalised to CHW."""
    img = Image.open(crop).convert("RGB").resize((resize, resize), Image.BILINEAR)
    top = (resize - crop_size) // 2
    ref = np.asarray(img, dtype=np.float32)[top : top + crop_size, top : top + crop_size] / 255.0
    return ((ref - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)


def test_matches_a_pil_reference_within_one_grey_level():
    """DALI (antialiased bilinear) and PIL (bilinear) apply the same triangle filter to the same
    libjpeg-turbo pixels: they differ only where a value rounds to the other uint8 level. Measured:
    every value within 1 level, 8% of them off by one, mean |diff| 0.0014 in normalised units
    (1 level is 1/255/std = 0.017). The mean bound 0.004 leaves room for three times as many
    rounding flips; a nearest-neighbour resize (0.028-0.058, up to 100 levels), bicubic (0.010,
    20 levels) or a centre crop one pixel off (0.145) all fail it."""
    crops = [f for cls in ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil",
                           "platelet") for f in pbc_files(cls, 2, offset=20)]
    batch, _ = _pipe().decode_to_numpy([c.read_bytes() for c in crops])
    refs = np.stack([_pil_reference(c) for c in crops])
    levels = np.abs(batch - refs) * np.array(STD)[:, None, None] * 255
    assert levels.max() <= 1 + 1e-3, f"{levels.max():.2f} grey levels apart"
    assert np.abs(batch - refs).mean() < 0.004


def test_a_decoded_batch_survives_the_next_decodes():
    """DALI reuses its output buffers on every run, and the engine decodes the next batch while
    the last one is still being classified and QC-checked: the pixels and QC images a decode
    returns must be the caller's own, unchanged by later decodes (no timing involved here)."""
    pipe = _pipe(qc_output=True)
    first = [f.read_bytes() for f in pbc_files("neutrophil", 8)]
    others = [[f.read_bytes() for f in pbc_files(cls, 8)] for cls in ("lymphocyte", "platelet", "eosinophil")]
    kept = pipe.decode(first)
    pixels, qc = kept.pixels.copy(), kept.qc.copy()
    assert qc.shape == (8, QC_SIZE, QC_SIZE, 3) and qc.dtype == np.uint8  # QC keeps its own size
    for crops in others:
        later = pipe.decode(crops)
        assert not np.array_equal(later.pixels, pixels) and not np.array_equal(later.qc, qc)
    assert np.array_equal(kept.pixels, pixels), "a later decode overwrote the pixels of an earlier batch"
    assert np.array_equal(kept.qc, qc), "a later decode overwrote the QC images of an earlier batch"


def test_bad_crops_are_named_and_good_ones_kept():
    crops = [f.read_bytes() for f in pbc_files("lymphocyte", 3)]
    truncated = crops[1][: len(crops[1]) // 3]
    decoded = _pipe().decode([crops[0], truncated, crops[2], b"not an image", b""])
    batch, good, errors = decoded.pixels, decoded.good, decoded.errors
    assert good == [0, 2] and batch.shape[0] == 2
    assert "JPEG truncated" in errors[1]
    assert "not a JPEG, PNG or TIFF" in errors[3]
    assert errors[4] == "empty crop (0 bytes)"
    # the pipeline keeps working after a failure
    assert _pipe().decode(crops).good == [0, 1, 2]


def test_a_jpeg_cut_short_is_refused_before_decoding_whatever_it_embeds():
    """On an H100, nvJPEG decoded all 40 JPEGs of the corpus cut short (no end-of-image marker),
    which libjpeg-turbo refuses: the engine refuses them itself, on either device. An embedded
    thumbnail's own end-of-image marker, before the scan, must not pass a cut file; bytes after the
    end-of-image marker must not refuse a whole one."""
    from bmengine.engine.preprocess.dali_pipeline import TRUNCATED_JPEG
    from bmengine.engine.qc.damage import scan_bounds
    from bmengine.engine.store.image_header import jpeg_is_cut_short

    good, thumbnail = (f.read_bytes() for f in pbc_files("eosinophil", 2))
    app15 = b"\xff\xef" + (len(thumbnail) + 2).to_bytes(2, "big") + thumbnail  # an application segment holding a whole JPEG
    with_thumbnail = good[:2] + app15 + good[2:]
    start, end = scan_bounds(good)
    cut, cut_with_thumbnail = good[: (start + end) // 2], with_thumbnail[: -(end - start) // 2]
    padded = good + b"\x00" * 64
    assert [jpeg_is_cut_short(c) for c in (good, cut, with_thumbnail, cut_with_thumbnail, padded)] == [
        False, True, False, True, False]
    decoded = _pipe().decode([good, cut, with_thumbnail, cut_with_thumbnail, padded])
    assert decoded.good == [0, 2, 4]
    assert decoded.errors[1] == decoded.errors[3] == TRUNCATED_JPEG + "; not decoded"
    assert np.abs(decoded.pixels[1] - decoded.pixels[0]).max() < 1e-6  # the thumbnail segment changes no pixel


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
