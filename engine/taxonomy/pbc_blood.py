"""Peripheral-blood taxonomy of the PBC dataset (Acevedo et al. 2020), 8 classes.

Class names are the dataset's folder names. The differential is a leukocyte differential:
nucleated red cells (erythroblasts) are reported per 100 leukocytes and platelets are not
leukocytes, so both stay outside the base (CLSI H20 convention).
"""

from bmengine.engine.taxonomy.base import DerivedFigure, Taxonomy, register_taxonomy

_CLASSES = {
    "basophil": "basophil",
    "eosinophil": "eosinophil",
    "erythroblast": "erythroblast (nucleated red cell)",
    "ig": "immature granulocyte (promyelocyte, myelocyte, metamyelocyte)",
    "lymphocyte": "lymphocyte",
    "monocyte": "monocyte",
    "neutrophil": "neutrophil (segmented and band)",
    "platelet": "platelet",
}


@register_taxonomy
def pbc_blood() -> Taxonomy:
    return Taxonomy(
        name="pbc-blood-8",
        description="Peripheral blood, 8 classes of the PBC dataset (Acevedo et al., Data in Brief 2020)",
        classes=tuple(_CLASSES),
        class_descriptions=_CLASSES,
        excluded=frozenset({"erythroblast", "platelet"}),
        lineages={
            "granulocytic": ("neutrophil", "ig", "eosinophil", "basophil"),
            "lymphoid": ("lymphocyte",),
            "monocytic": ("monocyte",),
        },
        derived=(
            DerivedFigure(
                "nlr", ("neutrophil",), ("lymphocyte",), kind="ratio", description="neutrophil:lymphocyte ratio"
            ),
            DerivedFigure("ig_pct", ("ig",), description="immature granulocytes per 100 leukocytes (left shift)"),
            DerivedFigure("nrbc_per_100_wbc", ("erythroblast",), description="nucleated red cells per 100 leukocytes"),
        ),
        adjacent=(("ig", "neutrophil"),),
        base_description="leukocytes: every class except erythroblast and platelet",
    )
