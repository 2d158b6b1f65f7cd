"""Issue 11, item 1: "A `.pt` model runs code."

A `.pt` is a pickle; loading one with ``weights_only=False`` ran whatever its ``__reduce__`` named,
and the card's sha256 was no defence (the sender writes the card). Every loader — the engine's torch
backend, export, explain, ablation, trainer resume — must refuse such a file with a clear error and
run nothing; a checkpoint written by the trainer must still load, as data only.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bmengine.engine.model.card import ModelCard, ModelCardError, Preprocessing, load_card, sha256_of, write_card
from conftest import BMENGINE, pbc_files

torch = pytest.importorskip("torch", reason="`.pt` models and checkpoints need the [train] extra")

PBC_CLASSES = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]
SPEC = {"backbone": "regnetx_002", "attention": "se", "num_classes": 8, "input_size": 64}


class CreatesFile:
    """Unpickling this opens (so creates) ``marker``: the stand-in for any code a model file runs."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_evil(path: Path, marker: Path, legacy: bool = False) -> Path:
    """A checkpoint that looks like the trainer's (every key present) but whose weights run code."""
    state = {"model": CreatesFile(marker), "model_spec": SPEC, "optimizer": {}, "epoch": 1, "history": [],
             "best_macro_f1": 0.0, "config": {"run_dir": str(path.parent)}, "classes": PBC_CLASSES,
             "taxonomy": "pbc-blood-8"}
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy:  # a raw pickle, as torch wrote before its zip format
        with open(path, "wb") as handle:
            pickle.dump(state, handle, protocol=2)
    else:
        torch.save(state, path)
    return path


def write_evil_model(folder: Path, legacy: bool = False) -> tuple[Path, Path]:
    """``evil.pt`` with a card that checks out (classes, taxonomy, sha256) beside it; and the marker."""
    marker = folder / "pwned"
    model = write_evil(folder / "evil.pt", marker, legacy)
    card = ModelCard(name="evil", classes=PBC_CLASSES, taxonomy="pbc-blood-8", architecture=dict(SPEC),
                     preprocessing=Preprocessing(resize=72, crop=64), weights_file=model.name,
                     weights_sha256=sha256_of(model))
    write_card(card, model)
    return model, marker


def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(BMENGINE + [str(a) for a in args], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "raw-pickle"])
def test_load_backend_refuses_a_pt_that_would_run_code(tmp_path, legacy):
    from bmengine.engine.backends import load_backend

    model, marker = write_evil_model(tmp_path, legacy)
    load_card(model)  # the card is valid: only the file's content can give it away
    with pytest.raises(ModelCardError, match="refused: the file is not only tensors and plain data"):
        load_backend(model)
    assert not marker.exists()


def test_bmengine_run_refuses_it_with_exit_2(tmp_path):
    crops = tmp_path / "crops" / "S1"
    crops.mkdir(parents=True)
    for f in pbc_files("lymphocyte", 2):
        shutil.copy(f, crops / f.name)
    assert cli("ingest", tmp_path / "crops", "--out", tmp_path / "slides").returncode == 0
    model, marker = write_evil_model(tmp_path / "model")
    result = cli("run", tmp_path / "slides", "--model", model, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    assert "never unpickles a model file" in " ".join(result.stderr.split())
    assert not marker.exists()


def test_bmengine_export_refuses_it(tmp_path):
    evil = write_evil(tmp_path / "last.pt", tmp_path / "pwned")
    result = cli("export", evil, "--out", tmp_path / "evil.onnx", "--no-int8", "--no-evaluate")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "refused: the checkpoint is not only tensors and plain data" in result.stderr
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "evil.onnx").exists()


def test_explain_refuses_it(tmp_path):
    from bmengine.training.explain import load_checkpoint_model

    evil = write_evil(tmp_path / "best.pt", tmp_path / "pwned")
    with pytest.raises(ValueError, match="re-train or re-export"):
        load_checkpoint_model(evil)
    assert not (tmp_path / "pwned").exists()


def test_trainer_resume_refuses_it(pbc_subset, tmp_path):
    from bmengine.training.trainer import TrainConfig, train

    evil = write_evil(tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "pwned")
    cfg = TrainConfig(data_dir=str(pbc_subset), run_dir=str(evil.parent.parent), backbone="regnetx_002", resize=40,
                      crop=32, epochs=1, batch_size=16, limit_per_class=4, max_steps_per_epoch=1)
    with pytest.raises(ValueError, match="refused: the checkpoint is not only tensors and plain data"):
        train(cfg, resume=True, log=lambda _: None)
    assert not (tmp_path / "pwned").exists()


def test_ablation_refuses_it_in_a_run_it_would_resume(pbc_subset, tmp_path):
    from bmengine.training.ablation import AblationConfig, run_ablation

    run = tmp_path / "runs" / "regnetx_002__none__ce"
    write_evil(run / "checkpoints" / "last.pt", tmp_path / "pwned")
    cfg = AblationConfig(str(pbc_subset), str(tmp_path), ["regnetx_002"], ["none"], ["ce"], epochs=1, resize=40,
                         crop=32, batch_size=16, limit_per_class=4, max_steps_per_epoch=1)
    with pytest.raises(ValueError, match="refused"):
        run_ablation(cfg, log=lambda _: None)
    assert not (tmp_path / "pwned").exists()


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path):
    from bmengine.training.checkpoint import load_checkpoint

    whole = tmp_path / "whole.pt"
    torch.save({"model": {"w": torch.zeros(64)}, "model_spec": SPEC}, whole)
    damaged = tmp_path / "last.pt"
    damaged.write_bytes(whole.read_bytes()[:-100])  # cut short, as by a full disk
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(damaged)


def test_checkpoint_metadata_is_plain_data(tmp_path):
    """A Path or NumPy number in the config must not make the trainer's checkpoint unloadable."""
    from bmengine.training.trainer import _plain

    meta = _plain({"data_dir": tmp_path, "f1": np.float32(0.5), "n": np.int64(3), "mean": (0.4, 0.5)})
    torch.save({"config": meta}, tmp_path / "c.pt")
    assert torch.load(tmp_path / "c.pt", weights_only=True)["config"] == {
        "data_dir": str(tmp_path), "f1": 0.5, "n": 3, "mean": [0.4, 0.5]}


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory, pbc_subset) -> Path:
    """``last.pt`` as the current trainer writes it (one tiny epoch, in this process)."""
    from bmengine.training.trainer import TrainConfig, train

    run = tmp_path_factory.mktemp("issue11_run")
    train(TrainConfig(data_dir=str(pbc_subset), run_dir=str(run), backbone="regnetx_002", resize=40, crop=32,
                      epochs=1, batch_size=16, limit_per_class=4, max_steps_per_epoch=1), log=lambda _: None)
    return run / "checkpoints" / "last.pt"


def card_beside(pt: Path, state: dict, **architecture) -> None:
    """The card ``bmengine export`` would write for ``pt`` (architecture from the checkpoint's spec)."""
    cfg = state["config"]
    write_card(ModelCard(name=pt.stem, classes=state["classes"], taxonomy=state["taxonomy"],
                         architecture={**state["model_spec"], **architecture},
                         preprocessing=Preprocessing(resize=cfg["resize"], crop=cfg["crop"]),
                         weights_file=pt.name, weights_sha256=sha256_of(pt)), pt)


def test_trainer_checkpoint_runs_in_the_torch_backend_as_before(trained_checkpoint, tmp_path):
    """The current trainer's last.pt — and its bare state dict — load as data, with the card's
    architecture, and give the probabilities of the checkpoint's own model."""
    from bmengine.engine.backends import load_backend
    from bmengine.training.checkpoint import load_checkpoint, load_model
    from bmengine.training.export import EXPORT_KEYS
    from bmengine.training.trainer import RESUME_KEYS

    state = load_checkpoint(trained_checkpoint, require=RESUME_KEYS + EXPORT_KEYS)
    model, _ = load_model(trained_checkpoint)
    batch = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(batch)).softmax(dim=1).numpy()
    shutil.copy(trained_checkpoint, tmp_path / "full.pt")  # the whole trainer checkpoint
    torch.save(state["model"], tmp_path / "bare.pt")  # weights only: the card alone names the architecture
    for name in ("full.pt", "bare.pt"):
        card_beside(tmp_path / name, state)
        got = load_backend(tmp_path / name).infer(batch).probs
        assert np.abs(expected - got).max() < 1e-4, name


def test_weights_that_do_not_fit_the_cards_architecture_are_refused(trained_checkpoint, tmp_path):
    from bmengine.engine.backends import load_backend
    from bmengine.training.checkpoint import load_checkpoint

    pt = tmp_path / "tiny.pt"
    shutil.copy(trained_checkpoint, pt)
    card_beside(pt, load_checkpoint(pt), backbone="regnetx_004")
    with pytest.raises(ModelCardError, match="do not fit the architecture its card names"):
        load_backend(pt)
