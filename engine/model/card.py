"""The model card: the checked record that travels beside every model file.

A model file alone does not say which classes its outputs mean or how crops must be prepared;
the engine refuses to run one whose card is missing or disagrees with it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

CARD_FORMAT_VERSION = 1
PRECISIONS = ("fp32", "int8", "fp16")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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

    def validate(self, source: str = "<card>") -> None:
        """Refuse values no crop can be prepared with (they would fail deep in DALI, or silently
        produce garbage, e.g. a mean in 0..255 units or a zero std)."""
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if not _is_int(value) or value <= 0:
                raise _bad(source, f"preprocessing.{name}", "a positive whole number of pixels", value)
        if self.crop > self.resize:
            raise ModelCardError(f"{source}: preprocessing.crop {self.crop} is larger than preprocessing.resize "
                                 f"{self.resize} (the crop is cut out of the resized image)")
        if not _numbers(self.mean, 3) or not all(0 <= m <= 1 for m in self.mean):
            raise _bad(source, "preprocessing.mean", "3 numbers in 0..1 (RGB scaled to 0..1)", self.mean)
        if not _numbers(self.std, 3) or not all(0 < v <= 1 for v in self.std):
            raise _bad(source, "preprocessing.std", "3 numbers above 0 and at most 1 (RGB scaled to 0..1)", self.std)
        hue = self.hue_range
        if hue is not None and not (_numbers(hue, 2) and 0 <= hue[0] < hue[1] <= 360):
            raise _bad(source, "preprocessing.hue_range", "null or [min, max] degrees with 0 <= min < max <= 360", hue)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(values: Any, n: int) -> bool:
    """``n`` finite real numbers (a bool is not a number here, though Python says it is an int)."""
    return (isinstance(values, (list, tuple)) and len(values) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values))


def _bad(source: str, name: str, expected: str, value: Any) -> "ModelCardError":
    return ModelCardError(f"{source}: {name} must be {expected}, not {json.dumps(value, default=str)}")


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
    #: temperature scaling fitted at export: {"temperature": T, "ece_before", "ece_after", "fitted_on", ...};
    #: empty = T 1 (cards written before it existed)
    calibration: dict[str, Any] = field(default_factory=dict)
    #: the model's out-of-distribution output: {"score", "output", "threshold", "false_flag_rate",
    #: "fitted_on", "feature_dim", ...}; empty = the model has none (no crop is flagged unknown)
    ood: dict[str, Any] = field(default_factory=dict)

    @property
    def temperature(self) -> float:
        """What every backend divides the logits by before the softmax (1 without calibration)."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0

    @property
    def ood_output(self) -> str | None:
        """Name of the model output holding the OOD score, None for models without one."""
        return self.ood["output"] if self.ood else None

    def to_json(self) -> str:
        record = asdict(self)
        for name in _OPTIONAL_RECORDS:  # absent rather than empty: older cards stay as they were
            if not record[name]:
                del record[name]
        return json.dumps(record, indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<card>") -> "ModelCard":
        """A checked card: every field present, of the right kind and usable (see :meth:`validate`)."""
        if not isinstance(data, dict):
            raise ModelCardError(f"{source}: a model card is a JSON object, not {type(data).__name__}")
        required = ("name", "classes", "taxonomy", "architecture", "preprocessing", "weights_file", "weights_sha256")
        if missing := [k for k in required if k not in data]:
            raise ModelCardError(f"{source}: model card lacks {', '.join(missing)}")
        version = data.get("format_version", CARD_FORMAT_VERSION)
        if not _is_int(version) or version < 1:
            raise _bad(source, "format_version", "a whole number from 1", version)
        if version > CARD_FORMAT_VERSION:
            raise ModelCardError(f"{source}: card format {version} is newer than this bmengine reads")
        if unexpected := sorted(set(data) - {f.name for f in fields(cls)}):
            raise ModelCardError(f"{source}: unexpected field in model card: {', '.join(unexpected)}")
        optional = {k: data.get(k) or {} for k in _OPTIONAL_RECORDS if k in data}  # null = absent
        card = cls(preprocessing=_preprocessing(data["preprocessing"], source),
                   **{k: v for k, v in data.items() if k != "preprocessing" and k not in optional}, **optional)
        card.validate(source)
        return card

    def validate(self, source: str = "<card>") -> None:
        """Refuse a card that cannot be right, naming the field, before any model file is opened."""
        for name in ("name", "taxonomy", "weights_file"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise _bad(source, name, "a non-empty string", getattr(self, name))
        classes = self.classes
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
            raise _bad(source, "classes", "a non-empty list of class names (strings)", classes)
        if duplicates := sorted({c for c in classes if classes.count(c) > 1}):
            raise ModelCardError(f"{source}: classes lists {', '.join(duplicates)} more than once")
        if not isinstance(self.weights_sha256, str) or not _SHA256.fullmatch(self.weights_sha256):
            raise _bad(source, "weights_sha256", "64 lowercase hex digits", self.weights_sha256)
        if self.precision not in PRECISIONS:
            raise _bad(source, "precision", " or ".join(PRECISIONS), self.precision)
        for name in ("architecture", "training", "metrics", "created_by", *_OPTIONAL_RECORDS):
            if not isinstance(getattr(self, name), dict):
                raise _bad(source, name, "a JSON object", getattr(self, name))
        self.preprocessing.validate(source)
        if self.calibration:
            t = self.calibration.get("temperature")
            if not (_numbers([t], 1) and t > 0):
                raise _bad(source, "calibration.temperature", "a finite number above 0", t)
        if self.ood:
            ood = self.ood
            if not isinstance(ood.get("output"), str) or not ood["output"]:
                raise _bad(source, "ood.output", "the name of the model output holding the score", ood.get("output"))
            if not isinstance(ood.get("score"), str) or not ood["score"]:
                raise _bad(source, "ood.score", "the name of the score (e.g. mahalanobis-tied)", ood.get("score"))
            if not _numbers([ood.get("threshold")], 1):
                raise _bad(source, "ood.threshold", "a finite number", ood.get("threshold"))
            rate = ood.get("false_flag_rate")
            if not (_numbers([rate], 1) and 0 < rate <= 0.5):
                raise _bad(source, "ood.false_flag_rate", "a number in (0, 0.5]", rate)
            if "standardise" in ood:  # the score is a standardised sum (engine/backends/ood_score.py)
                parts = ood["standardise"]
                keys = ("feature_mean", "feature_std", "energy_mean", "energy_std")
                values = [parts.get(k) for k in keys] if isinstance(parts, dict) else [None]
                if not (_numbers(values, 4) and values[1] > 0 and values[3] > 0):
                    raise _bad(source, "ood.standardise", "finite " + ", ".join(keys) + " (standard deviations "
                               "above 0)", parts)


#: optional card records, absent from cards written before them
_OPTIONAL_RECORDS = ("calibration", "ood")


def _preprocessing(record: Any, source: str) -> Preprocessing:
    """The card's preprocessing record; lists become tuples; unknown or missing keys are refused
    (a default size or normalisation would run the model on crops it was never trained on)."""
    if not isinstance(record, dict):
        raise _bad(source, "preprocessing", "a JSON object", record)
    known = {f.name for f in fields(Preprocessing)}
    if unknown := sorted(set(record) - known):
        raise ModelCardError(f"{source}: bad preprocessing record: unknown key {', '.join(unknown)}")
    if missing := [k for k in ("resize", "crop", "mean", "std") if k not in record]:  # no silent defaults
        raise ModelCardError(f"{source}: bad preprocessing record: lacks {', '.join(missing)}")
    return Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in record.items()})


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


def named_file_problem(path: Path, sha256: str) -> str | None:
    """Why ``path`` is not the file a card names by ``sha256`` (missing, or changed), or None."""
    if not Path(path).is_file():
        return f"{path} is not on this machine"
    if sha256_of(path) != sha256:
        return f"{path} has changed since the export (sha256 is not the card's {sha256[:12]}…)"
    return None


def exported_from(model_path: Path, card: ModelCard) -> list[tuple[Path, str]]:
    """The trainer checkpoints an exported model's card names, each with its sha256, in the order
    to use them: the half-precision copy beside the model, then the run's own file. Empty for a
    card from before exports recorded it."""
    record = card.training.get("checkpoint") or {}
    named = [(Path(model_path).parent / record["beside_model"]["file"], record["beside_model"]["sha256"])] \
        if record.get("beside_model") else []
    return named + ([(Path(record["file"]), record["sha256"])] if record.get("file") else [])


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
