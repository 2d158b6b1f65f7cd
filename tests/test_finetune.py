"""`bmengine finetune` on a tiny budget: another lab's crops under its own folder names (issue 10, item 6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA
from cli_helpers import bmengine

pytest.importorskip("torch", reason="fine-tuning needs the [train] extra")


def _lab(tmp_path: Path) -> tuple[Path, Path]:
    """Another lab's crops (16 real tecom crops) under its own folder names, and the label map for them."""
    lab = tmp_path / "lab"
    for name, cls in (("Neutro", "neutrophil"), ("Lympho", "lymphocyte")):  # the lab's names, not the model's
        (lab / name).mkdir(parents=True)
        for f in sorted((DATA / "wbc_zheng" / "tecom" / cls).glob("*.png"))[:8]:
            shutil.copy(f, lab / name / f.name)
    (lab / "_masks").mkdir()
    label_map = tmp_path / "map.csv"
    label_map.write_text("source,model_class\nNeutro,neutrophil\nLympho,lymphocyte\n_masks,\n")
    return lab, label_map


def test_finetune_on_another_labs_folders_records_both_validation_sets(trained_run, tmp_path):
    checkpoint = trained_run.parents[1] / "checkpoints" / "last.pt"
    lab, label_map = _lab(tmp_path)

    refused = bmengine("finetune", checkpoint, lab, "--out", tmp_path / "bad")
    assert refused.returncode == 2 and "Neutro" in refused.stderr and "--label-map" in refused.stderr

    result = bmengine("finetune", checkpoint, lab, "--out", tmp_path / "run", "--label-map", label_map,
                      "--epochs", "1", timeout=600)
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "run" / "export" / "run_int8.onnx.card.json").read_text())
    assert card["metrics"]["validation"]["n"] == 8  # the lab's held-out half
    assert card["metrics"]["base_validation"]["n"] > 0  # the original training data's validation split
    assert card["training"]["finetuned_from"]["checkpoint"] == str(checkpoint)
    # replay: base training crops of every class (not only the lab's two) in training, never in validation
    replay = card["training"]["finetuned_from"]["replay"]
    assert replay["n"] > 0 and len(replay["per_class"]) == len(card["classes"])
    base_split = json.loads((checkpoint.parents[1] / "split.json").read_text())
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    replayed = set(split["train"]) & set(base_split["train"])
    assert len(replayed) == replay["n"] and not set(split["train"]) & set(base_split["val"])
    assert all("lab-data" in f for f in split["val"]) and len(split["val"]) == 8
    assert 0.0 <= card["metrics"]["validation_before_finetune"]["accuracy"] <= 1.0
    assert card["classes"] == json.loads((trained_run.parent / (trained_run.name + ".card.json")).read_text())["classes"]
    scored = bmengine("eval", lab, "--model", tmp_path / "run" / "export" / "run_int8.onnx", "--label-map", label_map,
                      "--json")
    assert scored.returncode == 0 and json.loads(scored.stdout)["n"] == 16


def test_an_exported_model_is_finetuned_from_the_checkpoint_shipped_beside_it(trained_run, tiny_model, tmp_path):
    """What a lab has on a fresh clone: the exported model, not its run folder. `export --with-checkpoint`
    puts a half-precision checkpoint beside the model; `finetune MODEL.onnx` starts from it (checked
    against the card's sha256) and draws the base run's split again for replay."""
    import torch

    checkpoint = trained_run.parents[1] / "checkpoints" / "last.pt"
    model = tmp_path / "models" / "m.onnx"
    exported = bmengine("export", checkpoint, "--out", model, "--no-int8", "--no-ood", "--no-calibrate",
                        "--no-evaluate", "--with-checkpoint", timeout=300)
    assert exported.returncode == 0, exported.stderr
    beside = model.with_name("m.checkpoint.pt")
    record = json.loads(model.with_name("m.onnx.card.json").read_text())["training"]["checkpoint"]
    assert record["file"] == str(checkpoint) and record["beside_model"]["file"] == beside.name
    original, copy = (torch.load(p, weights_only=True) for p in (checkpoint, beside))
    assert "optimizer" in original and "optimizer" not in copy and copy["classes"] == original["classes"]
    for key, weight in original["model"].items():
        if weight.is_floating_point():  # half precision: within 2^-11 of each weight (plus subnormal rounding)
            assert copy["model"][key].dtype == torch.float16
            assert torch.allclose(copy["model"][key].float(), weight, rtol=2.0**-11, atol=1e-7), key
        else:
            assert torch.equal(copy["model"][key], weight)

    lab, label_map = _lab(tmp_path)
    card_file = model.with_name("m.onnx.card.json")  # the run is gone, as on a fresh clone
    card = json.loads(card_file.read_text())
    card["training"]["checkpoint"]["file"] = str(tmp_path / "gone" / "checkpoints" / "last.pt")
    card_file.write_text(json.dumps(card))
    good = beside.read_bytes()
    beside.write_bytes(good + b"x")
    refused = bmengine("finetune", model, lab, "--out", tmp_path / "bad", "--label-map", label_map)
    assert refused.returncode == 2 and "has changed since the export" in refused.stderr
    assert "gone/checkpoints/last.pt is not on this machine" in refused.stderr and not (tmp_path / "bad").exists()
    old_card = bmengine("finetune", tiny_model, lab, "--out", tmp_path / "bad", "--label-map", label_map)
    assert old_card.returncode == 2 and "does not name the checkpoint" in old_card.stderr

    beside.write_bytes(good)
    result = bmengine("finetune", model, lab, "--out", tmp_path / "run", "--label-map", label_map, "--epochs", "1",
                      timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"fine-tuning its checkpoint {beside}" in result.stderr
    tuned = json.loads((tmp_path / "run" / "export" / "run_int8.onnx.card.json").read_text())
    origin = tuned["training"]["finetuned_from"]
    assert origin["model"] == str(model) and origin["checkpoint"] == str(beside)
    # no split.json beside the shipped copy: the base split is drawn again, and it is the trainer's own
    assert "split drawn again" in origin["replay"]["from"]
    assert len(origin["replay"]["per_class"]) == len(tuned["classes"])
    base_split = json.loads((trained_run.parents[1] / "split.json").read_text())
    trained_on = json.loads((tmp_path / "run" / "split.json").read_text())["train"]
    replayed = {f for f in trained_on if "lab-data" not in f}
    assert len(replayed) == origin["replay"]["n"] and replayed <= set(base_split["train"])



def test_the_checkpoint_shipped_beside_a_model_exports_again_with_its_own_split(trained_run, tmp_path):
    """A newer bmengine re-exports a shipped model from the half-precision checkpoint beside it (its
    run folder was on another machine: the shipped default's on a lent GPU). Without the run's
    split.json the split is drawn again as the trainer drew it, so the card scores the same held-out crops."""
    import torch

    checkpoint = trained_run.parents[1] / "checkpoints" / "last.pt"
    model = tmp_path / "models" / "m.onnx"
    first = bmengine("export", checkpoint, "--out", model, "--no-int8", "--no-ood", "--no-calibrate",
                     "--with-checkpoint", timeout=300)
    assert first.returncode == 0, first.stderr
    beside = torch.load(model.with_name("m.checkpoint.pt"), weights_only=True)
    beside["config"]["run_dir"] = str(tmp_path / "elsewhere" / "run")  # as on a fresh clone
    moved = tmp_path / "shipped" / "m.checkpoint.pt"
    moved.parent.mkdir()
    torch.save(beside, moved)
    again = bmengine("export", moved, "--out", tmp_path / "again" / "m.onnx", "--no-int8", "--no-ood",
                     "--no-calibrate", timeout=300)
    assert again.returncode == 0, again.stderr
    assert "split drawn again" in again.stderr
    val = json.loads((trained_run.parents[1] / "split.json").read_text())["val"]
    cards = [json.loads(p.read_text()) for p in (model.with_name("m.onnx.card.json"),
                                                 tmp_path / "again" / "m.onnx.card.json")]
    assert [c["metrics"]["validation"]["n"] for c in cards] == [len(val), len(val)]
    # the same weights (to half precision) on the same crops
    assert abs(cards[0]["metrics"]["validation"]["accuracy"] - cards[1]["metrics"]["validation"]["accuracy"]) <= 1 / len(val)
    beside["config"]["data_dir"] = str(tmp_path / "no-data")  # nor its data: refused, nothing written
    torch.save(beside, moved)
    refused = bmengine("export", moved, "--out", tmp_path / "refused" / "m.onnx", "--no-int8", timeout=300)
    assert refused.returncode == 2 and "neither its run's split.json nor its data folder" in refused.stderr
    assert "Traceback" not in refused.stderr and not (tmp_path / "refused").exists()

def _base_run(tmp_path, per_class_files: int = 6):
    """A base run's split.json over real PBC crops in a nested class-per-folder layout."""
    from conftest import pbc_files

    data = tmp_path / "pbc"
    train, val = [], []
    for cls in ("lymphocyte", "neutrophil", "platelet"):
        folder = data / cls / "batch-1"
        folder.mkdir(parents=True)
        for i, f in enumerate(pbc_files(cls, per_class_files)):
            shutil.copy(f, folder / f.name)
            (val if i % 3 == 0 else train).append(str(folder / f.name))
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": train, "val": val}))
    return data, split, train, val


def test_replay_takes_base_training_crops_of_each_class_by_top_folder(tmp_path):
    from bmengine.training.replay import read_replay, select_replay, write_replay

    classes = ("basophil", "lymphocyte", "neutrophil", "platelet")
    data, split, train, val = _base_run(tmp_path)
    Path(train[0]).unlink()  # gone since the base run: skipped, not an error
    listed = [Path(p) for p in json.loads(split.read_text())["train"]]
    replay = select_replay(listed, str(split), data, classes, per_class=3, seed=0)
    chosen = [str(f) for f in replay.files]
    assert set(chosen) <= set(train[1:]) and not set(chosen) & set(val)
    assert sorted(classes[i] for i in set(replay.labels)) == ["lymphocyte", "neutrophil", "platelet"]
    assert all(Path(f).relative_to(data).parts[0] == classes[label] for f, label in zip(chosen, replay.labels))
    assert np.bincount(replay.labels).max() == 3
    again = read_replay(write_replay(replay, classes, tmp_path / "replay.json"), classes)
    assert again.files == replay.files and (again.labels == replay.labels).all()
    with pytest.raises(FileNotFoundError, match="split.json"):
        select_replay(listed, str(split), tmp_path / "elsewhere", classes, per_class=3, seed=0)


def test_with_replay_keeps_validation_and_gives_the_lab_half_of_training():
    from bmengine.engine.dataset import ImageFolder
    from bmengine.training.replay import ReplaySet, with_replay

    lab = ImageFolder(Path("lab"), ("a", "b"), tuple(Path(f"lab/{i}.png") for i in range(10)),
                      np.array([0] * 5 + [1] * 5))
    train_idx, val_idx = np.array([0, 1, 2, 5, 6, 7]), np.array([3, 4, 8, 9])
    replay = ReplaySet(tuple(Path(f"pbc/{i}.jpg") for i in range(20)), np.array([0, 1] * 10), "split.json")
    merged, train = with_replay(lab, train_idx, replay)
    assert merged.files[:10] == lab.files and (merged.labels[val_idx] == lab.labels[val_idx]).all()
    own = train[train < 10]
    assert set(own) == set(train_idx) and len(own) >= len(replay.files)
    assert [merged.files[i] for i in train[train >= 10]] == list(replay.files)
    assert not set(train) & set(val_idx)


def test_train_limit_keeps_at_most_n_training_crops_per_class_and_never_touches_validation():
    from bmengine.engine.dataset import stratified_split
    from bmengine.training.trainer import _limit_indices

    labels = np.array([0] * 30 + [1] * 7 + [2] * 2)
    train, val = stratified_split(labels, 0.5, seed=0)
    kept = _limit_indices(train, labels, 5, seed=0)
    assert set(kept) <= set(train) and not set(kept) & set(val)
    assert np.bincount(labels[kept]).tolist() == [5, min(5, int((labels[train] == 1).sum())), 1]
    assert (kept == _limit_indices(train, labels, 5, seed=0)).all()
    assert not (kept == _limit_indices(train, labels, 5, seed=1)).all()


def test_a_missing_lab_folder_is_named_before_anything_is_written(tmp_path):
    """It was "[Errno 2] No such file or directory" from deep inside."""
    from bmengine.engine.labels import LabelMap
    from bmengine.training.finetune import labelled_view

    with pytest.raises(FileNotFoundError, match="gone: folder of the lab's labelled crops not found"):
        labelled_view(tmp_path / "gone", tmp_path / "view", ("neutrophil",), LabelMap())
    assert not (tmp_path / "view").exists()
