"""Weight averaging (training/weight_average.py, ``bmengine train --average-from N``): the average is
the arithmetic mean of the weights the run visited, batch norm is re-measured exactly, the averaged
network is what ``last.pt`` holds, and a run killed part-way resumes to the same average."""

import shutil

import pytest

torch = pytest.importorskip("torch", reason="training needs the [train] extra")

from bmengine.training.weight_average import WeightAverage, batch_norm_layers, recompute_batch_norm  # noqa: E402


def _small_model():
    from bmengine.engine.model.networks.backbones import ModelSpec, create_model

    torch.manual_seed(0)
    return create_model(ModelSpec("regnetx_002", "none", 8, input_size=64))


def test_the_average_is_the_mean_of_the_visited_weights():
    model = _small_model()
    visited = []
    average = None
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
        visited.append({k: v.clone() for k, v in model.state_dict().items()})
        average = WeightAverage(model) if average is None else average
        if step:
            average.update(model)
    assert average.count == 5
    restored = WeightAverage.from_state(average.to_state())
    restored.apply_to(model)
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            expected = torch.stack([v[key].float() for v in visited]).mean(0)
            assert torch.allclose(value.float(), expected, atol=1e-5), key
        else:  # step counters are not averaged
            assert torch.equal(value, visited[-1][key])


def test_batch_norm_is_remeasured_as_the_exact_mean_over_the_batches():
    model = _small_model()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn((4, 3, 64, 64), generator=g) * 2 + 0.5 for _ in range(3)]
    model.eval()
    stem_bn = model.stem.bn
    assert stem_bn is batch_norm_layers(model)[0]
    seen = recompute_batch_norm(model, batches)
    assert seen == 12 and not model.training and not stem_bn.training  # the mode it found
    with torch.no_grad():
        conv_out = torch.cat([model.stem.conv(b) for b in batches])
    assert torch.allclose(stem_bn.running_mean, conv_out.mean(dim=(0, 2, 3)), atol=1e-4)
    per_batch_var = torch.stack([model.stem.conv(b).detach().var(dim=(0, 2, 3)) for b in batches]).mean(0)
    assert torch.allclose(stem_bn.running_var, per_batch_var, rtol=1e-3)
    assert stem_bn.momentum == 0.1  # restored


def _config(pbc_subset, run, **kw):
    from bmengine.training.trainer import TrainConfig

    return TrainConfig(data_dir=str(pbc_subset), run_dir=str(run), backbone="regnetx_002", attention="none",
                       epochs=2, batch_size=8, resize=72, crop=64, max_steps_per_epoch=2, limit_per_class=4,
                       val_fraction=0.25, augment="cross-lab", **kw)  # colour ops: batch norm is re-measured under bf16


class _Killed(Exception):
    pass


def test_an_averaged_run_keeps_the_average_in_last_pt_and_resumes_to_the_same_weights(tmp_path, pbc_subset):
    from bmengine.training.checkpoint import load_checkpoint
    from bmengine.training.trainer import train

    lines = []
    summary = train(_config(pbc_subset, tmp_path / "straight", average_from=0), log=lines.append)
    record = summary["weight_average"]
    assert record["steps_averaged"] == 4 and record["from_epoch"] == 0 and record["batch_norm_images"] > 0
    assert any(line.startswith("weight average of 4 steps") for line in lines)
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert straight["weight_average"] is None and straight["weight_average_summary"]["steps_averaged"] == 4
    assert straight["val_report"]["macro_f1"] == pytest.approx(record["val_macro_f1"])

    def die_after_epoch_one(line: str) -> None:  # epoch 2 is trained, its checkpoint never written
        if line.startswith("epoch 2:"):
            raise _Killed
    killed = tmp_path / "killed"
    with pytest.raises(_Killed):
        train(_config(pbc_subset, killed, average_from=0), log=die_after_epoch_one)
    assert load_checkpoint(killed / "checkpoints" / "last.pt")["weight_average"]["count"] == 2
    shutil.rmtree(killed / "cache", ignore_errors=True)
    train(_config(pbc_subset, killed, average_from=0), resume=True, log=lambda _: None)
    resumed = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert resumed["weight_average_summary"]["steps_averaged"] == 4
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key

    later = train(_config(pbc_subset, tmp_path / "later", average_from=1), log=lambda _: None)
    assert later["weight_average"]["steps_averaged"] == 2
    plain = train(_config(pbc_subset, tmp_path / "plain"), log=lambda _: None)  # the same steps, not averaged
    assert "weight_average" not in plain
    raw = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(v, straight["model"][k]) for k, v in raw.items() if v.is_floating_point())


def test_average_from_must_be_inside_the_run(pbc_subset, tmp_path):
    with pytest.raises(ValueError, match="average_from must be an epoch count in \\[0, 2\\)"):
        _config(pbc_subset, tmp_path / "r", average_from=2)
