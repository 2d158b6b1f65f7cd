"""Model bundles: a model file plus its JSON card."""

from bmengine.engine.model.card import (
    ModelCard,
    ModelCardError,
    Preprocessing,
    card_path_for,
    exported_from,
    load_card,
    named_file_problem,
    sha256_of,
    write_card,
)

__all__ = ["ModelCard", "ModelCardError", "Preprocessing", "card_path_for", "exported_from", "load_card",
           "named_file_problem", "sha256_of", "write_card"]
