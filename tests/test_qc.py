"""Garbled-crop detection on the real damaged Matek crops (they decode without any error)."""

import csv

import numpy as np

from bmengine.engine.preprocess.dali_pipeline import CropPipeline, PipelineSpec
from bmengine.engine.qc import SEAM_THRESHOLD, garbled_flags, seam_scores
from bmengine.engine.qc.garbled import GARBLED_THRESHOLDS, garbled, garbled_scores
from conftest import BM, pbc_files


def _decode_for_qc(blobs):
    pipe = CropPipeline(PipelineSpec(128, 112, (0.5,) * 3, (0.25,) * 3, batch_size=64, qc_output=True, qc_size=128))
    decoded = pipe.decode(blobs)
    assert decoded.good == list(range(len(blobs)))  # no decode error: the damage is silent
    return decoded.qc


def test_all_known_bad_matek_crops_are_flagged_and_no_clean_one():
    rows = list(csv.DictReader(open(BM / "manifest.csv")))
    qc = _decode_for_qc([(BM / r["file"]).read_bytes() for r in rows])
    assert qc.shape == (len(rows), 128, 128, 3) and qc.dtype == np.uint8
    flags = garbled_flags(qc)
    for row, flag in zip(rows, flags):
        assert (flag == "garbled") == (row["listed_as"] == "known_bad_example"), row["file"]


def test_clean_pbc_crops_stay_below_the_threshold():
    blobs = [f.read_bytes() for cls in ("basophil", "platelet", "neutrophil", "ig") for f in pbc_files(cls, 16)]
    assert seam_scores(_decode_for_qc(blobs)).max() < SEAM_THRESHOLD


def test_a_shifted_stripe_is_caught_in_a_clean_crop():
    img = _decode_for_qc([pbc_files("monocyte", 1)[0].read_bytes()])[0].copy()
    img[80:, :] = np.roll(img[80:, :], 40, axis=1)[:, :, ::-1]  # shifted rows with swapped colours
    assert garbled_flags(img[None]) == ["garbled"]


def test_each_trace_of_damage_passes_its_own_threshold_and_a_clean_crop_none():
    img = _decode_for_qc([pbc_files("monocyte", 1)[0].read_bytes()])[0]
    tint = img.astype(int)
    tint[70:, :, 2] -= 14  # a drifted colour over the bottom, its edge spread over two rows
    tint[69, :, 2] -= 7
    fill = img.copy()
    fill[100:] = 128  # the data ran out: the decoder filled the rest with grey
    wrap = img.copy()
    wrap[60:, 12:], wrap[60:, :12] = img[60:, :-12], img[59:-1, -12:]  # blocks shifted along the rows
    batch = np.stack([img, np.clip(tint, 0, 255).astype(np.uint8), fill, wrap])
    scores = garbled_scores(batch)
    passed = {name: list(s > GARBLED_THRESHOLDS[name]) for name, s in scores.items()}
    assert not any(p[0] for p in passed.values())
    assert passed["colour_step"][1] and not passed["row_seam"][1]  # too soft for the row seam alone
    assert passed["flat_rows"][2] and passed["column_seam"][3]
    assert list(garbled(batch)) == [False, True, True, True]
