"""Issue 11, item 8: a 1x1 image, a grey image and a decompression bomb were counted as cells.

Every crop goes through the engine's own DALI CPU pipeline and ``quality_flags`` gets what the
engine gives it: ``Decoded.qc`` (the resized, uncropped uint8 image) and ``Decoded.shapes`` (each
crop's height, width and channels from its file header).
"""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from PIL import Image

from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec
from bmengine.engine.qc import CHECKS, quality_flags
from bmengine.engine.qc import damage
from conftest import BM, DATA, pbc_files

TECOM = DATA / "wbc_zheng" / "tecom"
# Tecom crops whose source picture holds a straight seam (a strip of another field, or a white
# patch pasted in: seen by eye), which the garbled check rightly finds at some QC size.
TECOM_SEAMED = {f"tecom_{i:03d}.png" for i in (11, 115, 116, 157, 159, 161, 163, 167, 168, 169, 172, 241, 247,
                                                264, 273, 283, 288, 295, 297)}


@pytest.fixture(scope="module")
def pipe() -> CropPipeline:
    """The default model's preprocessing (resize 144, crop 128), with the QC image."""
    return CropPipeline(PipelineSpec(144, 128, (0.5,) * 3, (0.25,) * 3, batch_size=64, qc_output=True))


def flags(pipe: CropPipeline, blobs: list[bytes]) -> list[str]:
    """quality_flags of every crop, or "error" where DALI could not decode it (an error row)."""
    out = []
    for start in range(0, len(blobs), 64):
        chunk = blobs[start : start + 64]
        decoded = pipe.decode(chunk)
        batch = ["error"] * len(chunk)
        if decoded.good:
            found = quality_flags(decoded.qc, decoded.shapes)
            for i, f in zip(decoded.good, found):
                batch[i] = f
        out += batch
    return out


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return out.getvalue()


def real_crop(cls: str = "neutrophil") -> Image.Image:
    return Image.open(pbc_files(cls, 1)[0])


def test_a_1x1_image_is_too_small_and_blank(pipe):
    pixel = Image.new("RGB", (1, 1), (200, 120, 180))
    found = flags(pipe, [encode(pixel, "PNG"), encode(pixel, "JPEG")])
    for f in found:
        assert {"too_small", "blank"} <= set(f.split(";")), f


def test_a_20x20_crop_is_too_small(pipe):
    crop = real_crop("lymphocyte")
    centre = crop.crop((170, 170, 190, 190))
    [found] = flags(pipe, [encode(centre)])
    assert "too_small" in found.split(";")


def test_grey_crops_are_not_colour(pipe):
    grey = real_crop("eosinophil").convert("L")
    blobs = [encode(grey), encode(grey, "PNG"), encode(grey.convert("RGB")), encode(grey.convert("RGB"), "PNG")]
    assert [shape[2] for shape in pipe.decode(blobs).shapes] == [1, 1, 3, 3]  # the last two only look grey
    for f in flags(pipe, blobs):
        assert f == "not_colour", f  # a real cell, only grey: nothing else is wrong with it


def test_a_decompression_bomb_is_refused_or_flagged(pipe):
    """Above the engine's pixel cap a bomb is never decoded (an error row); under it, a picture
    this size is a whole field, not a crop."""
    bomb, field = (encode(Image.new("L", size, 255), "PNG") for size in ((6000, 6000), (2400, 1600)))
    assert len(bomb) < 100_000 and len(field) < 100_000  # megapixels in a few kilobytes
    assert flags(pipe, [bomb, field]) == ["error", "too_large;not_colour;blank;overexposed"]


def test_black_and_white_crops_are_blank_and_badly_exposed(pipe):
    size = real_crop().size
    black, white = (encode(Image.new("RGB", size, c)) for c in ((0, 0, 0), (255, 255, 255)))
    assert flags(pipe, [black, white]) == ["not_colour;blank;underexposed", "not_colour;blank;overexposed"]


def test_clean_pbc_crops_of_every_class_are_not_flagged(pipe):
    classes = ("basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet")
    files = [f for cls in classes for f in pbc_files(cls, 6, offset=300)]
    assert flags(pipe, [f.read_bytes() for f in files]) == [""] * len(files)


def test_tecom_crops_are_not_flagged_unless_their_picture_has_a_seam(pipe):
    files = sorted(TECOM.glob("[!_]*/*.png"))
    assert len(files) == 300
    found = dict(zip((f.name for f in files), flags(pipe, [f.read_bytes() for f in files])))
    assert {name for name, f in found.items() if f} <= TECOM_SEAMED  # never too_small, never another flag
    assert {f for f in found.values()} <= {"", "garbled"}


def test_matek_garbled_crops_are_flagged_and_clean_ones_are_not(pipe):
    rows = list(csv.DictReader(open(BM / "manifest.csv")))
    found = flags(pipe, [(BM / r["file"]).read_bytes() for r in rows])
    for row, f in zip(rows, found):
        assert f == ("garbled" if row["listed_as"] == "known_bad_example" else ""), row["file"]


@pytest.mark.parametrize("kind", list(damage.DAMAGE_KINDS))
def test_every_kind_of_jpeg_damage_is_caught(pipe, kind):
    """Damaged crops either fail to decode (an error row) or are flagged garbled, but for at most
    one in six (the corpus benchmark catches 97-98% of them, not all); damage that left the picture
    as it was (under 1% of the pixels moved by more than 24 levels) is skipped."""
    rng = np.random.default_rng(11)
    sources = [f.read_bytes() for f in pbc_files("monocyte", 6, offset=200)]
    others = [f.read_bytes() for f in pbc_files("neutrophil", 3, offset=200)]
    damaged = [damage.DAMAGE_KINDS[kind](s, rng, others[i % 3]) for i, s in enumerate(sources)]
    clean = pipe.decode([damage.reference(kind, s) for s in sources]).qc
    decoded = pipe.decode(damaged)
    changed = {i: (np.abs(decoded.qc[j].astype(int) - clean[i]).max(axis=-1) > 24).mean()
               for j, i in enumerate(decoded.good)}
    visible = [i for i in range(len(sources)) if changed.get(i, 1.0) >= 0.01]
    assert len(visible) >= 4, "the damage should change most crops visibly"
    found = flags(pipe, damaged)
    missed = [i for i in visible if found[i] != "error" and "garbled" not in found[i].split(";")]
    assert len(missed) <= 1, (kind, [found[i] for i in visible])


def test_quality_flags_takes_a_batch_and_checks_its_arguments():
    images = np.full((2, 144, 144, 3), 128, np.uint8)
    assert quality_flags(images[:0], []) == []
    found = quality_flags(images, [(363, 360, 1), (20, 400, 3)])
    assert found == ["not_colour;blank", "too_small;elongated;not_colour;blank"]
    assert list(CHECKS)[:2] == ["too_small", "too_large"]  # flags come in the registry's order
    with pytest.raises(ValueError):
        quality_flags(images, [(363, 360, 3)])
    with pytest.raises(ValueError):
        quality_flags(images.astype(np.float32), [(363, 360, 3)] * 2)
