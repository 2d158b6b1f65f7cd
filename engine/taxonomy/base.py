"""What a taxonomy is: a class list plus the rules that turn class counts into a differential.

Nothing else in the engine knows a class name; every count, percentage and derived figure is
computed from a :class:`Taxonomy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal


@dataclass(frozen=True)
class DerivedFigure:
    """A figure computed from class counts, e.g. the M:E ratio or the blast percentage.

    ``kind="ratio"`` gives ``sum(numerator) / sum(denominator)``; ``kind="percent"`` gives
    ``100 * sum(numerator) / sum(denominator)`` and, being a proportion, gets a binomial interval.
    An empty ``denominator`` means "the differential base" (all counted cells).
    """

    name: str
    numerator: tuple[str, ...]
    denominator: tuple[str, ...] = ()
    kind: Literal["ratio", "percent"] = "percent"
    description: str = ""


@dataclass(frozen=True)
class Taxonomy:
    """A class list and how a differential is computed from it.

    ``excluded`` classes (artefacts, smudge cells, platelets in a leukocyte differential...) are
    counted and reported but are not part of the differential base: their percentages are given
    "per 100 counted cells", as nucleated red cells are reported per 100 leukocytes.
    """

    name: str
    description: str
    classes: tuple[str, ...]
    class_descriptions: dict[str, str]
    excluded: frozenset[str] = frozenset()
    lineages: dict[str, tuple[str, ...]] = field(default_factory=dict)
    derived: tuple[DerivedFigure, ...] = ()
    adjacent: tuple[tuple[str, str], ...] = ()
    base_description: str = ""

    def __post_init__(self) -> None:
        known = set(self.classes)
        if len(known) != len(self.classes):
            raise ValueError(f"taxonomy {self.name!r}: duplicate class names")
        if missing := set(self.class_descriptions) ^ known:
            raise ValueError(f"taxonomy {self.name!r}: descriptions do not match classes: {sorted(missing)}")
        used = set(self.excluded) | {c for group in self.lineages.values() for c in group}
        used |= {c for figure in self.derived for c in figure.numerator + figure.denominator}
        used |= {c for pair in self.adjacent for c in pair}
        if unknown := used - known:
            raise ValueError(f"taxonomy {self.name!r}: rules name unknown classes {sorted(unknown)}")

    @property
    def counted(self) -> tuple[str, ...]:
        """Classes in the differential base, in class-list order."""
        return tuple(c for c in self.classes if c not in self.excluded)

    def index(self, class_name: str) -> int:
        return self.classes.index(class_name)

    def is_lenient_match(self, true_class: str, predicted: str) -> bool:
        """Matek et al.'s lenient scoring: adjacent maturation stages count as correct."""
        return true_class == predicted or (true_class, predicted) in self.adjacent or (
            predicted,
            true_class,
        ) in self.adjacent

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "classes": list(self.classes),
            "excluded": sorted(self.excluded),
            "lineages": {k: list(v) for k, v in self.lineages.items()},
            "derived": [
                {
                    "name": f.name,
                    "numerator": list(f.numerator),
                    "denominator": list(f.denominator),
                    "kind": f.kind,
                }
                for f in self.derived
            ],
        }


_REGISTRY: dict[str, Callable[[], Taxonomy]] = {}


def register_taxonomy(factory: Callable[[], Taxonomy]) -> Callable[[], Taxonomy]:
    """Decorator: make a taxonomy available by the name it carries."""
    _REGISTRY[factory().name] = factory
    return factory


def get_taxonomy(name: str) -> Taxonomy:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown taxonomy {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_taxonomies() -> list[str]:
    return sorted(_REGISTRY)
