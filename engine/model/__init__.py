"""Model bundles: a model file plus its JSON card."""

from bmengine.engine.model.card import (
    ModelCard,
    ModelCardError,
    Preprocessing,
    card_path_for,
    load_card,
    sha256_of,
    write_card,
)

__all__ = ["ModelCard", "ModelCardError", "Preprocessing", "card_path_for", "load_card", "sha256_of", "write_card"]
