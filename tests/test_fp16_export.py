"""The fp16 export (issue 13 item 3): an fp16 ONNX with float32 IO that a strongly typed TensorRT
network compiles to fp16, checked here with ONNX Runtime on real PBC crops."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from bmengine.engine.backends import load_backend
from bmengine.engine.evaluate import predict_files
from bmengine.engine.model import load_card
from conftest import ASSETS, PBC, pbc_files

onnx = pytest.importorskip("onnx")
FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def fp16_bundle(tiny_model, tmp_path_factory):
    """The test model's fp32 export beside its fp16 version (made as `bmengine export --fp16` does)."""
    from bmengine.training.fp16 import write_fp16_bundle

    folder = tmp_path_factory.mktemp("fp16")
    for name in ("tiny.onnx", "tiny.onnx.card.json"):
        shutil.copy(tiny_model.with_name(name), folder / name)
    return folder / "tiny.onnx", write_fp16_bundle(folder / "tiny.onnx")


def test_the_fp16_file_has_fp16_weights_float32_io_and_an_fp16_card(fp16_bundle):
    fp32, fp16 = fp16_bundle
    assert fp16.name == "tiny_fp16.onnx"
    model = onnx.load(str(fp16))
    types = [init.data_type for init in model.graph.initializer]
    assert types.count(FLOAT16) >= 40 and types.count(FLOAT) <= 2  # LayerNorm's scale and bias only
    # float32 IO: what DALI emits and every backend feeds (the TensorRT backend refuses another input)
    assert [(v.name, v.type.tensor_type.elem_type) for v in model.graph.input] == [("image", FLOAT)]
    assert [(v.name, v.type.tensor_type.elem_type) for v in model.graph.output] == [("logits", FLOAT)]
    first = next(n for n in model.graph.node if "image" in n.input)
    assert first.op_type == "Cast" and first.attribute[0].i == FLOAT16
    card = load_card(fp16)  # its sha256 is the file's
    assert card.precision == "fp16" and card.name.endswith("-fp16")
    assert card.training["fp16"]["fp32_nodes"] == {"LayerNormalization": 1, "Softmax": 1}
    assert card.classes == load_card(fp32).classes and card.preprocessing == load_card(fp32).preprocessing
    assert card.metrics == {"fp32_validation": {k: load_card(fp32).metrics["validation"][k]
                                                for k in ("accuracy", "macro_f1", "per_class_f1")}}


def test_softmax_and_layernorm_stay_fp32(fp16_bundle):
    """Their inputs come through Casts back to float32 (the converter's node boundary)."""
    model = onnx.load(str(fp16_bundle[1]))
    producer = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        if node.op_type in ("Softmax", "LayerNormalization"):
            cast = producer[node.input[0]]
            assert cast.op_type == "Cast" and cast.attribute[0].i == FLOAT, node.name


def test_fp16_probabilities_match_fp32_on_real_crops(fp16_bundle):
    """64 crops the model never saw, 8 per class. Measured (ONNX Runtime 1.32, CPU): argmax agrees
    on 64, max |dp| 0.0015, mean 3e-5. Bounds: no flip, max |dp| < 0.02, mean < 0.001 (a swapped
    class column or an fp16 overflow gives |dp| near 1)."""
    fp32, fp16 = fp16_bundle
    classes = load_card(fp32).classes
    files = [f for cls in classes for f in pbc_files(cls, 8, offset=40)]
    a, _ = predict_files(load_backend(fp32), files)
    b, errors = predict_files(load_backend(fp16), files)
    assert errors == [None] * len(files)
    assert a.max(axis=1).mean() > 0.8, "the test model is near-uniform: fp16 errors would not show"
    assert (a.argmax(axis=1) == b.argmax(axis=1)).all()
    assert np.abs(a - b).max() < 0.02 and np.abs(a - b).mean() < 1e-3


def test_fp16_macro_f1_within_half_a_point_of_fp32_on_the_held_out_split(fp16_bundle):
    """Issue 13: within 0.5 macro-F1 points. The test model's 480 held-out crops
    (tests/assets/tiny_split.csv): measured 0.9479 for both."""
    from bmengine.engine.metrics import classification_report

    fp32, fp16 = fp16_bundle
    classes = load_card(fp32).classes
    rows = [r for r in csv.DictReader(open(ASSETS / "tiny_split.csv")) if r["split"] == "val"]
    files = [PBC / r["file"] for r in rows]
    labels = np.asarray([classes.index(r["file"].split("/")[0]) for r in rows])
    f1 = {}
    for name, model in (("fp32", fp32), ("fp16", fp16)):
        probs, errors = predict_files(load_backend(model), files)
        assert errors == [None] * len(files)
        f1[name] = classification_report(labels, probs, classes)["macro_f1"]
    assert f1["fp32"] > 0.9
    assert abs(f1["fp32"] - f1["fp16"]) <= 0.005


def test_compile_takes_the_fp16_export_as_fp16_and_refuses_an_fp32_file_called_fp16(fp16_bundle, tmp_path):
    from bmengine.training.compile_tensorrt import CompileError, prepared_onnx

    fp32, fp16 = fp16_bundle
    graph, precision = prepared_onnx(fp16, "fp16")
    assert precision == "fp16, strongly typed"
    assert onnx.load_from_string(graph).graph.initializer[0].data_type in (FLOAT, FLOAT16)
    with pytest.raises(CompileError, match="says fp16 but no float16 weights.*--fp16"):
        prepared_onnx(fp32, "fp16")


def test_export_writes_the_fp16_model_with_its_ood_head_in_fp32(trained_run, tmp_path):
    """`bmengine export --fp16` on a checkpoint trained here: the fp16 model is scored, calibrated
    and given its own OOD threshold like the others; the Mahalanobis head stays fp32."""
    from bmengine.training.ood import head_nodes
    from cli_helpers import bmengine

    out = tmp_path / "m.onnx"
    result = bmengine("export", trained_run.parents[1] / "checkpoints" / "last.pt", "--out", out, "--no-int8",
                      "--fp16", "--decode-device", "cpu")
    assert result.returncode == 0, result.stderr
    assert "fp16: " in result.stdout
    fp16 = tmp_path / "m_fp16.onnx"
    card = json.loads((tmp_path / "m_fp16.onnx.card.json").read_text())
    assert card["precision"] == "fp16" and card["name"] == "m-fp16"
    assert card["ood"]["output"] == "ood_score" and "fp16 model" in card["ood"]["threshold_fitted_on"]
    assert card["calibration"]["temperature"] > 0 and "macro_f1" in card["metrics"]["validation"]
    model = onnx.load(str(fp16))
    assert {v.name: v.type.tensor_type.elem_type for v in model.graph.output} == {"logits": FLOAT, "ood_score": FLOAT}
    head = set(head_nodes(model.graph))
    assert head
    weights = {init.name: init.data_type for init in model.graph.initializer}
    head_weights = {i for node in model.graph.node if node.name in head for i in node.input if i in weights}
    assert head_weights and all(weights[w] == FLOAT for w in head_weights)
    scores = load_backend(fp16).infer(np.zeros((2, 3, 64, 64), np.float32)).ood_score
    assert scores is not None and np.isfinite(scores).all()
