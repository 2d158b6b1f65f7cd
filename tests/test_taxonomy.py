import pytest

from bmengine.engine.taxonomy import DerivedFigure, Taxonomy, get_taxonomy, list_taxonomies
from conftest import PBC

MATEK_CODES = "ABE ART BAS BLA EBO EOS FGC HAC KSC LYI LYT MMZ MON MYB NGB NGS NIF OTH PEB PLM PMO".split()


def test_shipped_taxonomies_are_registered():
    assert {"matek-bone-marrow-21", "pbc-blood-8"} <= set(list_taxonomies())


def test_matek_taxonomy_follows_icsh():
    tax = get_taxonomy("matek-bone-marrow-21")
    assert list(tax.classes) == MATEK_CODES
    assert tax.excluded == {"ART", "KSC", "NIF"}
    assert len(tax.counted) == 18
    figures = {f.name: f for f in tax.derived}
    assert figures["me_ratio"].kind == "ratio"
    assert set(figures["me_ratio"].denominator) == {"EBO", "PEB"}
    assert "BLA" not in figures["me_ratio"].numerator
    assert figures["blast_pct"].numerator == ("BLA",)
    assert tax.is_lenient_match("NGB", "NGS") and tax.is_lenient_match("NGS", "NGB")
    assert not tax.is_lenient_match("BLA", "LYT")


def test_pbc_taxonomy_classes_are_the_data_folders():
    tax = get_taxonomy("pbc-blood-8")
    assert list(tax.classes) == sorted(p.name for p in PBC.iterdir() if p.is_dir())
    assert tax.excluded == {"erythroblast", "platelet"}


def test_unknown_taxonomy_names_the_known_ones():
    with pytest.raises(KeyError, match="pbc-blood-8"):
        get_taxonomy("nope")


def test_taxonomy_rejects_rules_on_unknown_classes():
    with pytest.raises(ValueError, match="unknown classes"):
        Taxonomy("t", "d", ("a", "b"), {"a": "a", "b": "b"}, derived=(DerivedFigure("x", ("c",)),))
