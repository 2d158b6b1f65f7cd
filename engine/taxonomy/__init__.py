"""Taxonomies: class lists and differential rules. Importing this package registers the shipped ones."""

from bmengine.engine.taxonomy.base import (
    DerivedFigure,
    Taxonomy,
    get_taxonomy,
    list_taxonomies,
    register_taxonomy,
)
from bmengine.engine.taxonomy import matek_bone_marrow, pbc_blood  # noqa: F401  (registers)

__all__ = ["DerivedFigure", "Taxonomy", "get_taxonomy", "list_taxonomies", "register_taxonomy"]
