"""`bmengine finetune` on a tiny budget: another lab's crops under its own folder names (issue 10, item 6)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import DATA
from cli_helpers import bmengine

pytest.importorskip("torch", reason="fine-tuning needs the [train] extra")


def test_finetune_on_another_labs_folders_records_both_validation_sets(trained_run, tmp_path):
    checkpoint = trained_run.parents[1] / "checkpoints" / "last.pt"
    lab = tmp_path / "lab"
    for name, cls in (("Neutro", "neutrophil"), ("Lympho", "lymphocyte")):  # the lab's names, not the model's
        (lab / name).mkdir(parents=True)
        for f in sorted((DATA / "wbc_zheng" / "tecom" / cls).glob("*.png"))[:8]:
            shutil.copy(f, lab / name / f.name)
    (lab / "_masks").mkdir()
    label_map = tmp_path / "map.csv"
    label_map.write_text("source,model_class\nNeutro,neutrophil\nLympho,lymphocyte\n_masks,\n")

    refused = bmengine("finetune", checkpoint, lab, "--out", tmp_path / "bad")
    assert refused.returncode == 2 and "Neutro" in refused.stderr and "--label-map" in refused.stderr

    result = bmengine("finetune", checkpoint, lab, "--out", tmp_path / "run", "--label-map", label_map,
                      "--epochs", "1", timeout=600)
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "run" / "export" / "run_int8.onnx.card.json").read_text())
    assert card["metrics"]["validation"]["n"] == 8  # the lab's held-out half
    assert card["metrics"]["base_validation"]["n"] > 0  # the original training data's validation split
    assert card["training"]["finetuned_from"]["checkpoint"] == str(checkpoint)
    assert card["classes"] == json.loads((trained_run.parent / (trained_run.name + ".card.json")).read_text())["classes"]
    scored = bmengine("eval", lab, "--model", tmp_path / "run" / "export" / "run_int8.onnx", "--label-map", label_map,
                      "--json")
    assert scored.returncode == 0 and json.loads(scored.stdout)["n"] == 16
