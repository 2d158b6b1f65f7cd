"""The engine refuses a model whose card is missing or disagrees with it, and says why."""

import json
import shutil
import subprocess

import pytest

from bmengine.engine.assets import DEFAULT_MODEL, SAMPLE_SLIDES
from bmengine.engine.backends import load_backend
from bmengine.engine.model import ModelCard, ModelCardError, card_path_for, load_card, sha256_of
from conftest import BMENGINE


@pytest.fixture
def bundle(tiny_model, tmp_path):
    """A private copy of the fp32 tiny model and its card, free to damage."""
    src = tiny_model.with_name("tiny.onnx")
    model = tmp_path / src.name
    shutil.copy(src, model)
    shutil.copy(card_path_for(src), card_path_for(model))
    return model


def _edit_card(model, **changes):
    path = card_path_for(model)
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_a_good_bundle_loads(bundle):
    backend = load_backend(bundle)
    assert backend.name == "onnxruntime" and backend.io().num_classes == 8
    assert load_card(bundle).weights_sha256 == sha256_of(bundle)


def test_missing_card(bundle):
    card_path_for(bundle).unlink()
    with pytest.raises(ModelCardError, match=r"no model card beside it \(expected tiny.onnx.card.json\)"):
        load_backend(bundle)


def test_changed_weights_fail_the_sha_check(bundle):
    with open(bundle, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ModelCardError, match="differs from its card"):
        load_backend(bundle)


def test_class_count_disagreement(bundle):
    from bmengine.engine.taxonomy import get_taxonomy

    _edit_card(bundle, taxonomy="matek-bone-marrow-21", classes=list(get_taxonomy("matek-bone-marrow-21").classes))
    with pytest.raises(ModelCardError, match="model outputs 8 classes but its card lists 21"):
        load_backend(bundle)


def test_input_size_disagreement(bundle):
    data = json.loads(card_path_for(bundle).read_text())
    data["preprocessing"].update(resize=240, crop=224)
    card_path_for(bundle).write_text(json.dumps(data))
    with pytest.raises(ModelCardError, match="model input is 64px but its card says 224px"):
        load_backend(bundle)


def test_classes_not_of_the_named_taxonomy(bundle):
    data = json.loads(card_path_for(bundle).read_text())
    _edit_card(bundle, classes=list(reversed(data["classes"])))
    with pytest.raises(ModelCardError, match="are not those of taxonomy"):
        load_backend(bundle)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"taxonomy": "no-such-taxonomy"}, "unknown taxonomy"),
        ({"format_version": 99}, "newer than this bmengine reads"),
        ({"weights_file": "other.onnx"}, "card describes 'other.onnx'"),
    ],
)
def test_bad_card_fields(bundle, changes, message):
    _edit_card(bundle, **changes)
    with pytest.raises(ModelCardError, match=message):
        load_backend(bundle)


def test_card_that_is_not_json(bundle):
    card_path_for(bundle).write_text("{ not json")
    with pytest.raises(ModelCardError, match="not valid JSON"):
        load_backend(bundle)


def test_unknown_model_suffix(bundle):
    other = bundle.with_suffix(".bin")
    shutil.copy(bundle, other)
    shutil.copy(card_path_for(bundle), card_path_for(other))
    _edit_card(other, weights_file=other.name)
    with pytest.raises(ModelCardError, match="no backend runs '.bin' files"):
        load_backend(other)


def test_missing_model_file(tmp_path):
    with pytest.raises(ModelCardError, match="nowhere.onnx: model file not found"):
        load_card(tmp_path / "nowhere.onnx")


def _shipped_card() -> dict:
    return json.loads(card_path_for(DEFAULT_MODEL).read_text())


def _set(data: dict, path: str, value) -> None:
    """Set (or, with value DELETE, remove) ``a.b`` in a card record."""
    *parents, key = path.split(".")
    for p in parents:
        data = data[p]
    if value is DELETE:
        del data[key]
    else:
        data[key] = value


DELETE = object()
SHA = "0123456789abcdef" * 4
REFUSED = [  # (field, value, what the message says)
    ("classes", DELETE, "lacks classes"),
    ("weights_sha256", DELETE, "lacks weights_sha256"),
    ("preprocessing", DELETE, "lacks preprocessing"),
    ("colour", "blue", "unexpected field in model card: colour"),
    ("preprocessing.interpolation", "nearest", "bad preprocessing record: unknown key interpolation"),
    ("preprocessing.crop", DELETE, "bad preprocessing record: lacks crop"),
    ("preprocessing", [144, 128], "preprocessing must be a JSON object"),
    ("classes", ["basophil", "ig", "basophil"], "classes lists basophil more than once"),
    ("classes", [], "classes must be a non-empty list"),
    ("classes", "basophil,ig", "classes must be a non-empty list"),
    ("classes", ["basophil", 3], "classes must be a non-empty list"),
    ("preprocessing.std", [0.229, 0.0, 0.225], "preprocessing.std must be 3 numbers above 0"),
    ("preprocessing.std", [0.229, -0.224, 0.225], "preprocessing.std must be 3 numbers above 0"),
    ("preprocessing.std", [58.4, 57.1, 57.4], "preprocessing.std must be 3 numbers above 0 and at most 1"),
    ("preprocessing.std", [0.229, None, 0.225], "preprocessing.std must be"),
    ("preprocessing.mean", [0.485, 0.456], "preprocessing.mean must be 3 numbers"),
    ("preprocessing.mean", [0.485, 0.456, 0.406, 0.5], "preprocessing.mean must be 3 numbers"),
    ("preprocessing.mean", ["r", "g", "b"], "preprocessing.mean must be 3 numbers"),
    ("preprocessing.mean", [123.7, 116.3, 103.5], "preprocessing.mean must be 3 numbers in 0..1"),
    ("preprocessing.mean", 0.5, "preprocessing.mean must be 3 numbers"),
    ("preprocessing.resize", "144", "preprocessing.resize must be a positive whole number"),
    ("preprocessing.resize", 0, "preprocessing.resize must be a positive whole number"),
    ("preprocessing.crop", -128, "preprocessing.crop must be a positive whole number"),
    ("preprocessing.crop", 127.5, "preprocessing.crop must be a positive whole number"),
    ("preprocessing.crop", True, "preprocessing.crop must be a positive whole number"),
    ("preprocessing.crop", 160, "preprocessing.crop 160 is larger than preprocessing.resize 144"),
    ("preprocessing.hue_range", [155, 125], "preprocessing.hue_range must be null or"),
    ("preprocessing.hue_range", [125], "preprocessing.hue_range must be null or"),
    ("preprocessing.hue_range", [0, 400], "preprocessing.hue_range must be null or"),
    ("preprocessing.hue_range", "125,155", "preprocessing.hue_range must be null or"),
    ("format_version", "1", "format_version must be a whole number"),
    ("format_version", 1.0, "format_version must be a whole number"),
    ("format_version", True, "format_version must be a whole number"),
    ("format_version", 0, "format_version must be a whole number"),
    ("weights_sha256", "abc123", "weights_sha256 must be 64 lowercase hex digits"),
    ("weights_sha256", SHA.upper(), "weights_sha256 must be 64 lowercase hex digits"),
    ("weights_sha256", SHA + "0", "weights_sha256 must be 64 lowercase hex digits"),
    ("weights_sha256", 12345, "weights_sha256 must be 64 lowercase hex digits"),
    ("precision", "int4", "precision must be fp32 or int8 or fp16"),
    ("name", "", "name must be a non-empty string"),
    ("architecture", "coatnet_0", "architecture must be a JSON object"),
]


@pytest.mark.parametrize("field, value, message", REFUSED,
                         ids=[f"{f}=" + ("<deleted>" if v is DELETE else repr(v)[:24]) for f, v, _ in REFUSED])
def test_a_card_that_cannot_be_right_is_refused_naming_the_field(field, value, message):
    data = _shipped_card()
    _set(data, field, value)
    with pytest.raises(ModelCardError, match="^model.onnx.card.json: ") as caught:
        ModelCard.from_dict(data, source="model.onnx.card.json")
    assert message in str(caught.value)


def test_the_shipped_card_and_a_default_hue_range_pass():
    data = _shipped_card()
    assert ModelCard.from_dict(data).preprocessing.crop == 128
    _set(data, "preprocessing.hue_range", DELETE)  # cards from before hue mapping have none
    _set(data, "preprocessing.mean", [0, 0.5, 1])
    assert ModelCard.from_dict(data).preprocessing.hue_range is None


def test_run_with_an_impossible_card_exits_2_naming_card_and_field(bundle, tmp_path):
    """The CLI says which card and which field, in one message, without a traceback. (Rich wraps
    it at 80 columns when stderr is not a terminal, so the text is compared without whitespace.)"""
    data = json.loads(card_path_for(bundle).read_text())
    data["preprocessing"]["std"] = [0.229, 0, 0.225]
    card_path_for(bundle).write_text(json.dumps(data))
    result = subprocess.run(BMENGINE + ["run", str(SAMPLE_SLIDES), "--model", str(bundle), "--out",
                                        str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and result.stderr.count("error:") == 1, result.stderr
    message = "".join(result.stderr.split())
    assert message.startswith("error:" + str(card_path_for(bundle))) and "preprocessing.std" in message
    assert not (tmp_path / "out").exists()
