"""Where training runs (`--device`): the choice, its errors, and checkpoints that load anywhere.

The CUDA side is tests/test_gpu.py::test_training_on_cuda_follows_the_cpu_run (skipped without a GPU).
"""

import pytest

torch = pytest.importorskip("torch", reason="training needs the [train] extra")

from cli_helpers import bmengine  # noqa: E402

from bmengine.training.device import DeviceUnavailableError, resolve_device  # noqa: E402

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present; these check the no-GPU answers")


def test_cpu_and_auto_resolve_to_what_this_machine_has():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == resolve_device(" AUTO ") == expected


@pytest.mark.parametrize("name, words", [("gpu", "expected one of auto, cpu, cuda or cuda:N"),
                                         ("cuda:x", "give cuda or cuda:N")])
def test_a_device_name_it_cannot_read_is_refused_with_the_choices(name, words):
    with pytest.raises(DeviceUnavailableError, match=words):
        resolve_device(name)


@no_cuda
def test_cuda_without_a_gpu_says_so_and_trains_nothing(pbc_subset, tmp_path):
    with pytest.raises(DeviceUnavailableError, match="torch sees no CUDA GPU here"):
        resolve_device("cuda:0")
    run = tmp_path / "run"
    result = bmengine("train", pbc_subset, "--out", run, "--backbone", "regnetx_002", "--epochs", "1",
                      "--resize", "40", "--crop", "32", "--max-steps-per-epoch", "1", "--device", "cuda")
    assert result.returncode == 2
    assert "--device cuda: torch sees no CUDA GPU here" in result.stderr and "Traceback" not in result.stderr
    assert not run.exists()  # refused before the run folder or the image cache was made


def test_checkpoints_hold_cpu_tensors_and_the_history_names_the_device(pbc_subset, tmp_path):
    """A checkpoint is saved with every tensor on the CPU (a run trained on a GPU loads on a machine
    without one, even by plain ``torch.load``), and each epoch records where it ran."""
    from bmengine.training.trainer import TrainConfig, train

    summary = train(TrainConfig(data_dir=str(pbc_subset), run_dir=str(tmp_path), backbone="regnetx_002", resize=40,
                                crop=32, batch_size=16, epochs=1, max_steps_per_epoch=2, limit_per_class=6,
                                device="auto", average_from=0), log=lambda m: None)
    expected = str(resolve_device("auto"))
    assert summary["history"][0]["device"].split(" ")[0] == expected
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)  # no map_location
    tensors = [v for part in ("model", "optimizer") for v in _tensors(state[part])]
    assert tensors and all(t.device.type == "cpu" for t in tensors)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def test_a_finetune_does_not_inherit_where_the_base_run_trained(tmp_path):
    """The shipped default was trained on a GPU with 3 threads per run; a lab's fine-tune of it runs
    where the lab says (default: auto, 2 threads), not on a `cuda` its machine may not have."""
    from dataclasses import asdict

    from bmengine.training.finetune import FinetuneConfig, finetune_config
    from bmengine.training.trainer import TrainConfig

    base = asdict(TrainConfig(data_dir="pbc", run_dir="base", device="cuda", threads=3))
    lab = FinetuneConfig(checkpoint=tmp_path / "base.pt", data_dir=tmp_path / "lab", run_dir=tmp_path / "run")
    tuned = finetune_config(lab, base, "pbc-blood-8", tmp_path / "view")
    assert (tuned.device, tuned.threads) == ("auto", 2)
    chosen = FinetuneConfig(checkpoint=tmp_path / "base.pt", data_dir=tmp_path / "lab", run_dir=tmp_path / "run",
                            device="cpu", threads=4)
    again = finetune_config(chosen, base, "pbc-blood-8", tmp_path / "view")
    assert (again.device, again.threads) == ("cpu", 4)
