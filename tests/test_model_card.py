"""The engine refuses a model whose card is missing or disagrees with it, and says why."""

import json
import shutil

import pytest

from bmengine.engine.backends import load_backend
from bmengine.engine.model import ModelCardError, card_path_for, load_card, sha256_of


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
    data["preprocessing"]["crop"] = 224
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
