"""Matek et al. 2021 bone-marrow taxonomy (21 classes), with ICSH 2008 differential rules.

ICSH (Lee et al., Int J Lab Hematol 2008): count nucleated marrow cells; exclude artefacts,
smudged/broken cells and cells that cannot be identified; the M:E ratio is all granulocytes and
their precursors over all nucleated erythroid precursors. Blasts in Matek's data carry no lineage,
so they enter the blast percentage, not the M:E ratio.
"""

from bmengine.engine.taxonomy.base import DerivedFigure, Taxonomy, register_taxonomy

_CLASSES = {
    "ABE": "abnormal eosinophil",
    "ART": "artefact",
    "BAS": "basophil",
    "BLA": "blast",
    "EBO": "erythroblast",
    "EOS": "eosinophil",
    "FGC": "faggot cell",
    "HAC": "hairy cell",
    "KSC": "smudge cell",
    "LYI": "immature lymphocyte",
    "LYT": "lymphocyte",
    "MMZ": "metamyelocyte",
    "MON": "monocyte",
    "MYB": "myelocyte",
    "NGB": "band neutrophil",
    "NGS": "segmented neutrophil",
    "NIF": "not identifiable",
    "OTH": "other cell",
    "PEB": "proerythroblast",
    "PLM": "plasma cell",
    "PMO": "promyelocyte",
}

_MYELOID = ("PMO", "FGC", "MYB", "MMZ", "NGB", "NGS", "EOS", "ABE", "BAS")
_ERYTHROID = ("PEB", "EBO")


@register_taxonomy
def matek_bone_marrow() -> Taxonomy:
    return Taxonomy(
        name="matek-bone-marrow-21",
        description="Bone-marrow cytology, 21 classes of Matek et al. (Blood 2021), ICSH 2008 rules",
        classes=tuple(_CLASSES),
        class_descriptions=_CLASSES,
        excluded=frozenset({"ART", "KSC", "NIF"}),
        lineages={
            "myeloid": _MYELOID,
            "erythroid": _ERYTHROID,
            "lymphoid": ("LYI", "LYT", "PLM", "HAC"),
            "monocytic": ("MON",),
            "blast": ("BLA",),
        },
        derived=(
            DerivedFigure(
                "me_ratio",
                _MYELOID,
                _ERYTHROID,
                kind="ratio",
                description="myeloid:erythroid ratio (granulocytes and precursors / erythroid precursors)",
            ),
            DerivedFigure("blast_pct", ("BLA",), description="blasts per 100 nucleated cells counted"),
            DerivedFigure(
                "erythroid_pct", _ERYTHROID, description="erythroid precursors per 100 nucleated cells"
            ),
            DerivedFigure(
                "lymphoid_pct", ("LYI", "LYT", "PLM", "HAC"), description="lymphoid cells per 100 nucleated cells"
            ),
            DerivedFigure("plasma_cell_pct", ("PLM",), description="plasma cells per 100 nucleated cells"),
        ),
        adjacent=(
            ("PMO", "MYB"),
            ("MYB", "MMZ"),
            ("MMZ", "NGB"),
            ("NGB", "NGS"),
            ("PEB", "EBO"),
            ("LYI", "LYT"),
            ("EOS", "ABE"),
        ),
        base_description="nucleated cells counted: every class except ART, KSC and NIF (ICSH 2008)",
    )
