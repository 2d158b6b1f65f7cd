"""Training pieces on real crops: losses by hand, sampler, metrics, train -> checkpoint -> ONNX."""

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the [train] extra")

from bmengine.training.dataset import ImageFolder, stratified_split  # noqa: E402
from bmengine.training.losses import LossSpec, create_loss  # noqa: E402
from bmengine.training.losses.cost_sensitive import default_cost_matrix  # noqa: E402
from bmengine.training.metrics import classification_report  # noqa: E402
from bmengine.training.sampler import balanced_batches  # noqa: E402


def test_cross_entropy_matches_hand_value():
    loss = create_loss(LossSpec("ce"), np.array([10, 10, 10]))
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    assert float(loss(logits, torch.tensor([0]))) == pytest.approx(expected, rel=1e-6)


def test_cost_sensitive_adds_expected_cost_of_wrong_classes():
    counts = np.array([100, 25, 4])
    loss = create_loss(LossSpec("cost_sensitive", {"weight": 0.5}), counts)
    logits = torch.tensor([[1.0, 0.5, -0.5]])
    p = np.exp([1.0, 0.5, -0.5]) / np.exp([1.0, 0.5, -0.5]).sum()
    w = 1 / np.sqrt(counts)
    w = w / w.mean()
    # true class 2 (the rare one): cost of mass on classes 0 and 1, weighted by w[2]
    expected = -math.log(p[2]) + 0.5 * w[2] * (p[0] + p[1])
    assert float(loss(logits, torch.tensor([2]))) == pytest.approx(expected, rel=1e-5)
    matrix = default_cost_matrix(counts)
    assert np.allclose(np.diag(matrix), 0) and matrix[2, 0] > matrix[0, 2]  # rare-class errors cost more


def test_balanced_sampler_gives_equal_classes_per_batch():
    labels = np.array([0] * 100 + [1] * 10 + [2] * 3)
    batches = balanced_batches(labels, 12, np.random.default_rng(0))
    assert len(batches) == len(labels) // 12
    for batch in batches:
        assert np.bincount(labels[batch], minlength=3).tolist() == [4, 4, 4]


def test_metrics_on_a_hand_example():
    y = np.array([0, 0, 1, 1, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 0]] * 0.9 + 0.05
    report = classification_report(y, probs, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert report["per_class"]["a"]["recall"] == pytest.approx(1 / 2)
    assert report["per_class_f1"]["c"] == 0.0
    assert report["confusion_matrix"][2] == [1, 0, 0]
    assert report["top5_accuracy"] == 1.0


def test_dataset_scan_finds_nested_folders_and_splits_stratified(pbc_subset):
    data = ImageFolder.scan(pbc_subset)
    assert len(data.classes) == 8 and len(data) == 96
    train, val = stratified_split(data.labels, 0.25, seed=0)
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == 96
    assert np.bincount(data.labels[val]).tolist() == [3] * 8


def test_se_sits_after_the_group_conv_in_every_regnet_block():
    from bmengine.engine.model.networks import ModelSpec, create_model
    from bmengine.engine.model.networks.attention.se import SqueezeExcite

    model = create_model(ModelSpec("regnetx_002", "se", 8))
    blocks = [m for m in model.modules() if hasattr(m, "conv2") and hasattr(m, "se")]
    assert blocks and all(isinstance(b.se, SqueezeExcite) for b in blocks)
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 8)


def test_trained_model_exports_to_onnx_with_matching_outputs(trained_run):
    """`bmengine train` + `bmengine export` produced fp32 and int8 ONNX with cards; ORT == torch."""
    import onnxruntime as ort

    from bmengine.engine.bench import machine_words
    from bmengine.engine.model import load_card
    from bmengine.engine.model.networks import ModelSpec, create_model

    fp32 = trained_run.with_name("tiny.onnx")
    card, card8 = load_card(fp32), load_card(trained_run)
    assert card.precision == "fp32" and card8.precision == "int8"
    assert card.preprocessing.crop == 64 and card.classes == card8.classes and len(card.classes) == 8
    assert "accuracy" in card.metrics["validation"] and "fp32_validation" in card8.metrics
    assert card.training["machines"] == [machine_words()]  # the img/s it records name their machine
    run = fp32.parent.parent
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2
    model = create_model(ModelSpec(**state["model_spec"])).eval()
    model.load_state_dict(state["model"])
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"image": x.numpy()})  # the second output is ood_score
    assert np.allclose(got, expected, atol=1e-3)
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["val"])


def test_training_resumes_from_last_checkpoint(pbc_subset, tmp_path):
    from bmengine.training.trainer import TrainConfig, train

    cfg = dict(data_dir=str(pbc_subset), run_dir=str(tmp_path), backbone="regnetx_002", resize=40, crop=32,
               batch_size=16, max_steps_per_epoch=1, limit_per_class=6)
    first = train(TrainConfig(epochs=1, **cfg), log=lambda m: None)
    resumed = train(TrainConfig(epochs=3, keep_every=2, **cfg), resume=True, log=lambda m: None)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    assert resumed["history"][0] == first["history"][0]  # epoch 1 was not redone
    kept = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert "last.pt" in kept and [k for k in kept if k.startswith("epoch_")] == ["epoch_002.pt"]


def test_explain_writes_grad_cam_and_smoothgrad_overlays(trained_run, tmp_path):
    import subprocess

    from bmengine.training.explain import explain
    from conftest import BMENGINE, pbc_files

    checkpoint = trained_run.parent.parent / "checkpoints" / "last.pt"
    files = pbc_files("neutrophil", 1) + pbc_files("eosinophil", 1)
    explanations, pixels = explain(checkpoint, files, smooth_samples=4)
    assert pixels.shape == (2, 64, 64, 3)
    for e in explanations:
        assert e.grad_cam.shape == e.smooth_grad.shape == (64, 64)
        assert 0 <= e.grad_cam.min() and e.grad_cam.max() <= 1 + 1e-6 and e.smooth_grad.max() == pytest.approx(1)
        assert 0 < e.probability <= 1
    result = subprocess.run(BMENGINE + ["explain", str(checkpoint), str(files[0]), str(files[0].parent.parent / "ig"),
                                        "--sample", "1", "--out", str(tmp_path), "--smooth-samples", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    pngs = sorted(tmp_path.glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    # an exported model is explained through the checkpoint its card names (it was refused as unsafe)
    exported = subprocess.run(BMENGINE + ["explain", str(trained_run), str(files[1]), "--out", str(tmp_path / "m"),
                                          "--smooth-samples", "2"], capture_output=True, text=True)
    assert exported.returncode == 0, exported.stderr
    assert f"explaining its checkpoint {checkpoint}" in exported.stderr
    assert len(list((tmp_path / "m").glob("*.png"))) == 1


def test_hue_mapping_travels_from_training_to_the_card_and_the_engine(pbc_subset, tmp_path):
    import subprocess

    from bmengine.engine.backends import load_backend
    from bmengine.engine.evaluate import predict_files
    from bmengine.engine.model import load_card
    from bmengine.engine.preprocess.dali_pipeline import PipelineSpec
    from conftest import BMENGINE, pbc_files

    run = tmp_path / "run"
    common = dict(capture_output=True, text=True)
    assert subprocess.run(BMENGINE + ["train", str(pbc_subset), "--out", str(run), "--backbone", "regnetx_002",
                                      "--epochs", "1", "--batch-size", "16", "--resize", "40", "--crop", "32",
                                      "--max-steps-per-epoch", "1", "--hue-range", "125,155"], **common).returncode == 0
    onnx = run / "m.onnx"
    result = subprocess.run(BMENGINE + ["export", str(run / "checkpoints" / "last.pt"), "--out", str(onnx),
                                        "--no-int8"], **common)
    assert result.returncode == 0, result.stderr
    card = load_card(onnx)
    assert tuple(card.preprocessing.hue_range) == (125.0, 155.0)
    assert PipelineSpec.from_preprocessing(card.preprocessing).hue_range == (125.0, 155.0)
    probs, errors = predict_files(load_backend(onnx), pbc_files("basophil", 3))
    assert errors == [None] * 3 and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
