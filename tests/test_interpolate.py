"""A clean pass from given weights (`train --init-from`) and weights between two checkpoints
(`bmengine interpolate`, WiSE-FT): the recipe benchmarks/results/cross-lab-recipes.md measures."""

from __future__ import annotations

import json

import pytest

from cli_helpers import bmengine

torch = pytest.importorskip("torch", reason="training needs the [train] extra")

TINY = ["--backbone", "regnetx_002", "--attention", "se", "--batch-size", "16", "--resize", "72", "--crop", "64"]


def _params(path) -> dict:
    """A checkpoint's learned parameters (weights and biases; not batch-norm running statistics)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in state["model"].items() if v.is_floating_point() and "running_" not in k}


@pytest.fixture(scope="module")
def tuned_run(trained_run, pbc_subset, tmp_path_factory):
    """The tiny model trained two more steps from its own weights with clean augmentation."""
    base = trained_run.parents[1] / "checkpoints" / "last.pt"
    run = tmp_path_factory.mktemp("tuned")
    done = bmengine("train", pbc_subset, "--out", run, *TINY, "--epochs", "1", "--max-steps-per-epoch", "2",
                    "--lr", "1e-2", "--warmup-epochs", "0", "--init-from", base, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return base, run / "checkpoints" / "last.pt"


def test_init_from_starts_from_those_weights(trained_run, pbc_subset, tmp_path):
    """At learning rate 0 the run's weights stay the base's, and its 'before training' score is the
    base's own last validation score on the same split; without --init-from they are new."""
    base = trained_run.parents[1] / "checkpoints" / "last.pt"
    args = ["--epochs", "1", "--max-steps-per-epoch", "1", "--lr", "0", "--warmup-epochs", "0"]
    done = bmengine("train", pbc_subset, "--out", tmp_path / "same", *TINY, *args, "--init-from", base, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    mine, theirs = _params(tmp_path / "same" / "checkpoints" / "last.pt"), _params(base)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    before = json.loads((tmp_path / "same" / "start.json").read_text())
    base_last = torch.load(base, map_location="cpu", weights_only=True)["history"][-1]
    assert before["val_accuracy"] == pytest.approx(base_last["val_accuracy"])

    fresh = bmengine("train", pbc_subset, "--out", tmp_path / "fresh", *TINY, *args, timeout=600)
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    new = _params(tmp_path / "fresh" / "checkpoints" / "last.pt")
    assert not all(torch.equal(new[k], theirs[k]) for k in new)


def test_export_of_a_run_from_given_weights_says_how_those_were_trained(tuned_run, tmp_path):
    """The card of a `train --init-from` run describes that short run; `started_from` says how the
    weights it started from were trained (the shipped default is 10 epochs, then 4 from them)."""
    base, tuned = tuned_run
    out = tmp_path / "tuned.onnx"
    exported = bmengine("export", tuned, "--out", out, "--no-int8", "--no-ood", "--no-calibrate",
                        "--no-evaluate", timeout=600)
    assert exported.returncode == 0, exported.stderr[-2000:]
    training = json.loads(out.with_name("tuned.onnx.card.json").read_text())["training"]
    record = training["started_from"]
    assert record["checkpoint"] == str(base) and len(record["sha256"]) == 64
    assert record["epochs"] == 2 and training["epochs"] == 1  # the base's passes, then this run's
    assert " train " in record["command"] and "--init-from" not in record["command"]
    assert "--init-from" in training["command"] and record["augmentation"]["preset"]


def test_the_starting_point_is_recorded_at_training_time(tuned_run, tmp_path):
    """The run keeps how its starting weights were trained in its own checkpoints, so its export
    tells the lineage on a machine where the starting checkpoint is not (a run trained elsewhere)."""
    base, tuned = tuned_run
    state = torch.load(tuned, map_location="cpu", weights_only=True)
    recorded = state["started_from"]
    assert recorded["checkpoint"] == str(base) and recorded["epochs"] == 2 and len(recorded["sha256"]) == 64
    elsewhere = tmp_path / "checkpoints" / "last.pt"  # as if exported on another machine: the base is not there
    elsewhere.parent.mkdir()
    torch.save({**state, "config": {**state["config"], "init_from": str(tmp_path / "gone" / "last.pt")}}, elsewhere)
    out = tmp_path / "elsewhere.onnx"
    exported = bmengine("export", elsewhere, "--out", out, "--no-int8", "--no-ood", "--no-calibrate",
                        "--no-evaluate", timeout=600)
    assert exported.returncode == 0, exported.stderr[-2000:]
    card = json.loads(out.with_name("elsewhere.onnx.card.json").read_text())
    assert card["training"]["started_from"] == recorded


def test_init_from_weights_of_another_network_is_refused(trained_run, pbc_subset, tmp_path):
    base = trained_run.parents[1] / "checkpoints" / "last.pt"
    other = [a if a != "se" else "none" for a in TINY]  # the same backbone without its SE blocks
    done = bmengine("train", pbc_subset, "--out", tmp_path / "run", *other, "--epochs", "1",
                    "--max-steps-per-epoch", "1", "--init-from", base, timeout=600)
    assert done.returncode == 2
    assert "a regnetx_002 + se model; this run builds regnetx_002 + none" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "run" / "checkpoints").exists()
    missing = bmengine("train", pbc_subset, "--out", tmp_path / "run", *TINY, "--init-from", tmp_path / "nope.pt")
    assert missing.returncode == 2 and "nope.pt: checkpoint not found" in missing.stderr


def test_interpolated_weights_lie_between_and_export_records_where_they_came_from(tuned_run, tmp_path):
    base, tuned = tuned_run
    b, t = _params(base), _params(tuned)
    assert any(not torch.equal(b[k], t[k]) for k in b)  # two steps at lr 1e-2 moved the weights

    for alpha in ("0", "0.25"):
        done = bmengine("interpolate", base, tuned, "--alpha", alpha, "--out", tmp_path / f"mix{alpha}")
        assert done.returncode == 0, done.stderr[-2000:]
    at0 = _params(tmp_path / "mix0" / "checkpoints" / "last.pt")
    assert all(torch.equal(at0[k], b[k]) for k in b)
    mix = _params(tmp_path / "mix0.25" / "checkpoints" / "last.pt")
    for key in b:
        assert torch.allclose(mix[key], 0.75 * b[key] + 0.25 * t[key], atol=1e-6), key

    out = tmp_path / "mix0.25" / "export" / "mix.onnx"
    exported = bmengine("export", tmp_path / "mix0.25" / "checkpoints" / "last.pt", "--out", out,
                        "--calibration-images", "32", "--no-int8", timeout=600)
    assert exported.returncode == 0, exported.stderr[-2000:]
    card = json.loads(out.with_name("mix.onnx.card.json").read_text())
    record = card["training"]["interpolated"]
    assert record["alpha"] == 0.25 and record["base"]["checkpoint"] == str(base)
    assert len(record["tuned"]["sha256"]) == 64
    assert record["base"]["epochs"] == 2 and record["tuned"]["epochs"] == 1  # both passes, not only the last
    assert "--init-from" in record["tuned"]["command"] and " interpolate " in card["training"]["command"]
    assert "--alpha 0.25" in card["training"]["command"]
    assert card["metrics"]["validation"]["n"] == len(json.loads((tuned.parents[1] / "split.json").read_text())["val"])


def test_interpolate_refuses_two_different_networks_and_a_bad_alpha(tuned_run, tmp_path):
    from bmengine.training.interpolate import InterpolateError, interpolate_weights

    base, tuned = tuned_run
    b = torch.load(base, map_location="cpu", weights_only=True)["model"]
    wider = {k: torch.zeros(v.shape[0] + 1, *v.shape[1:]) if k.endswith("weight") and v.ndim == 4 else v
             for k, v in b.items()}
    with pytest.raises(InterpolateError, match="shape"):
        interpolate_weights(b, wider, 0.5)
    with pytest.raises(InterpolateError, match="different layers"):
        interpolate_weights(b, {k: v for k, v in b.items() if "head" not in k}, 0.5)
    bad = bmengine("interpolate", base, tuned, "--alpha", "1.5", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "--alpha must be in [0, 1], not 1.5" in bad.stderr
    assert not (tmp_path / "bad").exists()
