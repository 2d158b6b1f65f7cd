"""Commands a user types: eval's JSON, doctor, the train catalogue, helpful failures."""

import json
import re
import subprocess

import numpy as np
import pytest

from conftest import BMENGINE, pbc_files


def _run(*args):
    return subprocess.run(BMENGINE + [str(a) for a in args], capture_output=True, text=True)


def test_eval_json_scores_a_class_per_folder_dataset(tiny_model, pbc_subset):
    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import predict_files
    from bmengine.training.dataset import ImageFolder

    result = _run("eval", pbc_subset, "--model", tiny_model, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 96 and report["n_failed"] == 0
    assert set(report["per_class_f1"]) == set(report["per_class"]) and len(report["per_class_f1"]) == 8
    data = ImageFolder.scan(pbc_subset)
    probs, _ = predict_files(load_backend(tiny_model), list(data.files))
    assert report["accuracy"] == np.mean(probs.argmax(axis=1) == data.labels)
    assert 0 <= report["macro_f1"] <= 1 and report["model"]["sha256"]


def test_eval_held_out_scores_exactly_the_split_training_never_saw(tiny_model, tiny_model_data):
    """On the data the test model was trained on, --held-out re-draws the trainer's validation
    split (tiny_split.csv, from its split.json) and scores what `bmengine export` scored."""
    import pandas as pd

    from bmengine.engine.model import load_card
    from conftest import ASSETS

    split = pd.read_csv(ASSETS / "tiny_split.csv")
    val = split[split["split"] == "val"]
    result = _run("eval", tiny_model_data, "--model", tiny_model, "--held-out", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == len(val) == 8 * round(300 * 0.2) and len(split) == 8 * 300
    support = {c: v["support"] for c, v in report["per_class"].items()}
    assert support == val["file"].str.split("/").str[0].value_counts().to_dict()
    claimed = load_card(tiny_model).metrics["validation"]
    assert report["confusion_matrix"] == claimed["confusion_matrix"]


def test_eval_refuses_folders_the_model_does_not_know(tiny_model, tmp_path):
    (tmp_path / "not_a_class").mkdir()
    result = _run("eval", tmp_path, "--model", tiny_model)
    assert result.returncode == 2 and "not_a_class" in result.stderr


def test_doctor_reports_what_this_machine_runs():
    result = _run("doctor")
    assert result.returncode == 0
    assert "onnxruntime" in result.stdout and "dali-cpu" in result.stdout and "tensorrt" in result.stdout


def test_doctor_checks_the_finetune_checkpoint_against_the_card(tmp_path, monkeypatch):
    """A clone has the shipped default's checkpoint, matching its card; a copy that differs is named."""
    import shutil

    from bmengine.engine import assets
    from bmengine.engine.doctor import check

    assert check("finetune-checkpoint").ok
    models = tmp_path / "models"
    models.mkdir()
    (models / assets.DEFAULT_MODEL.name).symlink_to(assets.DEFAULT_MODEL)
    shutil.copy(assets.DEFAULT_MODEL.with_name(assets.DEFAULT_MODEL.name + ".card.json"), models)
    (models / "pbc_coatnet0_cs.checkpoint.pt").write_bytes(b"not the weights")
    monkeypatch.setattr(assets, "DEFAULT_MODEL", models / assets.DEFAULT_MODEL.name)
    bad = check("finetune-checkpoint")
    assert not bad.ok and "has changed since the export" in bad.detail
    (models / "pbc_coatnet0_cs.checkpoint.pt").unlink()
    assert "is not on this machine" in check("finetune-checkpoint").detail


def test_train_lists_its_parts():
    pytest.importorskip("torch", reason="the catalogue is the [train] extra's")
    result = _run("train", "--list")  # no dataset needed to see the catalogue
    assert result.returncode == 0, result.stderr
    assert "regnetx_032" in result.stdout and "se" in result.stdout and "cost_sensitive" in result.stdout


def test_train_without_a_dataset_says_what_is_missing():
    result = _run("train")
    assert result.returncode == 2
    assert "DATA_DIR" in result.stderr or "[train] extra" in result.stderr  # the latter without torch


def test_train_refuses_a_data_folder_it_cannot_train_on_naming_it_and_writing_nothing(tmp_path):
    """Each was a traceback (exit 1), or, with fewer crops than a batch, a model saved after no step."""
    import shutil

    pytest.importorskip("torch", reason="training needs the [train] extra")
    from bmengine.training.ablation import AblationConfig, run_ablation
    from bmengine.training.trainer import TrainConfig, TrainingDataError, train

    data = tmp_path / "lab"
    for cls in ("basophil", "neutrophil"):
        (data / cls).mkdir(parents=True)
        for f in pbc_files(cls, 3):
            shutil.copy(f, data / cls / f.name)
    (data / "empty-class").mkdir()
    (tmp_path / "nothing").mkdir()

    def config(folder, **extra):
        return TrainConfig(data_dir=str(folder), run_dir=str(tmp_path / "run"), backbone="regnetx_002",
                           attention="none", resize=72, crop=64, epochs=1, **extra)

    cases = {tmp_path / "gone": "gone: dataset folder not found",
             tmp_path / "nothing": "nothing: no images found in class sub-folders",
             data: "class folders ['basophil', 'empty-class', 'neutrophil']; pass --taxonomy with one whose "
                   "classes include them (matek-bone-marrow-21: ABE"}
    for folder, message in cases.items():
        with pytest.raises(TrainingDataError, match=re.escape(message)):
            train(config(folder), log=lambda m: None)
        with pytest.raises(TrainingDataError, match=re.escape(message)):  # before the grid's first run
            run_ablation(AblationConfig(str(folder), str(tmp_path / "ablation"), ["regnetx_002"], ["none"], ["ce"]))
    shutil.rmtree(data / "empty-class")
    with pytest.raises(TrainingDataError, match="4 training crops .* make no batch of --batch-size 8"):
        train(config(data, taxonomy="pbc-blood-8", batch_size=8), log=lambda m: None)
    assert not (tmp_path / "run").exists() and not (tmp_path / "ablation").exists()

    # through the command: said in one line, exit 2
    gone = _run("train", tmp_path / "gone", "--out", tmp_path / "run")
    assert gone.returncode == 2 and "error: " + str(tmp_path / "gone") + ": dataset folder not found" in gone.stderr
    assert "Traceback" not in gone.stderr and not (tmp_path / "run").exists()
    (data / "neutrophil" / "cut.jpg").write_bytes(pbc_files("neutrophil", 1, offset=9)[0].read_bytes()[:3000])
    cut = _run("train", data, "--out", tmp_path / "run", "--taxonomy", "pbc-blood-8", "--backbone", "regnetx_002",
               "--attention", "none", "--resize", "72", "--crop", "64", "--epochs", "1", "--batch-size", "4")
    assert cut.returncode == 2 and "1 training image(s) could not be decoded" in cut.stderr, cut.stderr[-1500:]
    assert "cut.jpg: JPEG truncated" in cut.stderr and "Traceback" not in cut.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bench_writes_a_record_naming_machine_model_and_stages(tmp_path):
    """Structure only: timings are measured, never asserted (benchmarks are not tests). Two small
    slides of real crops, not the shipped samples: every stage runs, in seconds instead of minutes."""
    from bmengine.engine.assets import DEFAULT_MODEL
    from cli_helpers import crop_folder, ingest

    slides = tmp_path / "slides"
    mix = {"neutrophil": 4, "lymphocyte": 4, "eosinophil": 4}
    ingest(crop_folder(tmp_path / "crops", {"s1": mix, "s2": mix}), slides)
    record = tmp_path / "bench.json"
    result = _run("bench", slides, "--model", DEFAULT_MODEL, "--repeats", "1", "--record", record)
    assert result.returncode == 0, result.stderr
    data = json.loads(record.read_text())
    assert data["machine"]["cores"] and data["model"]["sha256"] and data["model"]["precision"] == "int8"
    assert [s["stage"].split()[0] for s in data["stages"]] == ["read", "decode+resize+normalise", "infer", "end"]
    assert set(data["ratios"]) == {"end_to_end / slowest stage", "end_to_end / serial sum of stages"}


def test_ablate_runs_a_grid_and_writes_the_table(pbc_subset, tmp_path):
    import pandas as pd

    pytest.importorskip("torch", reason="ablate trains: it needs the [train] extra")

    out = tmp_path / "ablation"
    result = _run("ablate", pbc_subset, "--out", out, "--backbones", "regnetx_002,mobilenetv3_large_100",
                  "--attentions", "none,se", "--losses", "ce", "--epochs", "1", "--resize", "40", "--crop", "32",
                  "--batch-size", "16", "--max-steps-per-epoch", "1")
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out / "ablation.csv")
    # mobilenetv3_large_100 + se is skipped (attention only in RegNet/ResNet families): 3 configurations
    assert sorted(zip(table["backbone"], table["attention"])) == [
        ("mobilenetv3_large_100", "none"), ("regnetx_002", "none"), ("regnetx_002", "se")]
    assert {"accuracy", "top5_accuracy", "macro_precision", "macro_recall", "macro_f1", "onnx_img_per_s"} <= set(table)
    assert table["macro_f1"].is_monotonic_decreasing
    markdown = (out / "ablation.md").read_text()
    assert "Command: `" in markdown and markdown.count("| regnetx_002 |") == 2
    assert f"measured on {table['machine'][0]}" in markdown and table["machine"].nunique() == 1
    # the sweep design reuses the three finished runs and trains only the new loss
    again = _run("ablate", pbc_subset, "--out", out, "--design", "sweep", "--backbones", "regnetx_002,mobilenetv3_large_100",
                 "--attentions", "se,none", "--losses", "ce,gmmce", "--epochs", "1", "--resize", "40", "--crop", "32",
                 "--batch-size", "16", "--max-steps-per-epoch", "1")
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("finished earlier") == 3
    table = pd.read_csv(out / "ablation.csv")
    assert sorted(zip(table["backbone"], table["attention"], table["loss"])) == [
        ("mobilenetv3_large_100", "none", "ce"), ("regnetx_002", "none", "ce"), ("regnetx_002", "se", "ce"),
        ("regnetx_002", "se", "gmmce")]
    markdown = (out / "ablation.md").read_text()
    assert markdown.count("\n## ") == 3 and "Best 3 of 4" not in markdown  # sections; no ranking under 6 runs
    # another budget in the same folder is refused, naming the run and what differs; the table stays
    other = _run("ablate", pbc_subset, "--out", out, "--backbones", "regnetx_002", "--attentions", "none",
                 "--losses", "ce", "--epochs", "1", "--resize", "40", "--crop", "32", "--batch-size", "16",
                 "--max-steps-per-epoch", "1", "--seed", "1")
    assert other.returncode != 0 and "regnetx_002__none__ce" in other.stderr and "seed 0 (now 1)" in other.stderr
    assert len(pd.read_csv(out / "ablation.csv")) == 4
