"""The model card: the checked record that travels beside every model file.

A model file alone does not say which classes its outputs mean or how crops must be prepared;
the engine refuses to run one whose card is missing or disagrees with it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

CARD_FORMAT_VERSION = 1


class ModelCardError(ValueError):
    """A model bundle that cannot be trusted: missing card, bad field, or card/model mismatch."""


@dataclass
class Preprocessing:
    """How a crop becomes a tensor; the DALI pipeline and the trainer both read this."""

    resize: int = 144  # both sides, before the centre crop
    crop: int = 128  # network input, square
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # on 0..1 RGB
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    hue_range: tuple[float, float] | None = None  # Wang et al. hue mapping, degrees; None = off


@dataclass
class ModelCard:
    name: str
    classes: list[str]
    taxonomy: str
    architecture: dict[str, Any]
    preprocessing: Preprocessing
    weights_file: str
    weights_sha256: str
    precision: str = "fp32"  # fp32 | int8 | fp16
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created_by: dict[str, str] = field(default_factory=dict)
    format_version: int = CARD_FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<card>") -> "ModelCard":
        required = ("name", "classes", "taxonomy", "architecture", "preprocessing", "weights_file", "weights_sha256")
        if missing := [k for k in required if k not in data]:
            raise ModelCardError(f"{source}: model card lacks {', '.join(missing)}")
        if data.get("format_version", 1) > CARD_FORMAT_VERSION:
            raise ModelCardError(f"{source}: card format {data['format_version']} is newer than this bmengine reads")
        prep = dict(data["preprocessing"])
        try:
            preprocessing = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in prep.items()})
        except TypeError as exc:
            raise ModelCardError(f"{source}: bad preprocessing record: {exc}") from None
        fields = {k: v for k, v in data.items() if k != "preprocessing"}
        try:
            card = cls(preprocessing=preprocessing, **fields)
        except TypeError as exc:
            raise ModelCardError(f"{source}: unexpected field in model card: {exc}") from None
        if not card.classes or len(set(card.classes)) != len(card.classes):
            raise ModelCardError(f"{source}: class list is empty or has duplicates")
        return card


def card_path_for(model_path: Path) -> Path:
    """``model.onnx`` -> ``model.onnx.card.json``: one card per model file, so ``x.onnx`` and the
    ``x.plan`` compiled from it can sit side by side, each with its own sha256."""
    return model_path.with_name(model_path.name + ".card.json")


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_card(card: ModelCard, model_path: Path) -> Path:
    from bmengine.engine.outputs.atomic import atomic_write_text

    target = card_path_for(model_path)
    atomic_write_text(target, card.to_json() + "\n")
    return target


def load_card(model_path: Path, verify_sha: bool = True) -> ModelCard:
    """Read and check the card beside ``model_path``; the sha256 must match the file."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelCardError(f"{model_path}: model file not found")
    path = card_path_for(model_path)
    if not path.is_file():
        raise ModelCardError(
            f"{model_path}: no model card beside it (expected {path.name}); "
            "export models with `bmengine export`, which writes one"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelCardError(f"{path}: not valid JSON ({exc})") from None
    card = ModelCard.from_dict(data, source=str(path))
    if card.weights_file != model_path.name:
        raise ModelCardError(f"{path}: card describes {card.weights_file!r}, not {model_path.name!r}")
    if verify_sha:
        actual = sha256_of(model_path)
        if actual != card.weights_sha256:
            raise ModelCardError(
                f"{model_path}: sha256 {actual[:12]}… differs from its card ({card.weights_sha256[:12]}…); "
                "the model was changed after export"
            )
    from bmengine.engine.taxonomy import get_taxonomy

    try:
        taxonomy = get_taxonomy(card.taxonomy)
    except KeyError as exc:
        raise ModelCardError(f"{path}: {exc.args[0]}") from None
    if list(taxonomy.classes) != list(card.classes):
        raise ModelCardError(f"{path}: classes {card.classes} are not those of taxonomy {taxonomy.name!r}")
    return card
