"""The attention and loss catalogue: shapes, hand-computed values, and training steps on real crops."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the [train] extra")

from bmengine.training.losses import LOSSES, LossSpec, create_loss  # noqa: E402
from bmengine.training.losses.focal import effective_number_weights  # noqa: E402
from bmengine.engine.model.networks import ATTENTION, ModelSpec, create_model  # noqa: E402


@pytest.mark.parametrize("name", ATTENTION.names())
def test_attention_block_keeps_shape_and_is_differentiable(name):
    block = ATTENTION.create(name, 48, rd_channels=12)
    x = torch.randn(2, 48, 9, 7, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_simam_matches_its_closed_form():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
    d = np.array([4.0, 1.0, 0.0, 9.0])  # squared distances from the mean, 3
    var = d.sum() / 3
    expected = np.array([1, 2, 3, 6]) / (1 + np.exp(-(d / (4 * (var + 1e-4)) + 0.5)))
    assert np.allclose(ATTENTION.create("simam", 1)(x).flatten().numpy(), expected, atol=1e-6)


def test_eca_kernel_grows_with_channels():
    from bmengine.engine.model.networks.attention.eca import eca_kernel_size

    assert [eca_kernel_size(c) for c in (16, 64, 256, 1024)] == [3, 3, 5, 5]


def test_label_smoothing_hand_value():
    loss = create_loss(LossSpec("label_smoothing", {"smoothing": 0.3}), np.array([5, 5]))
    logits = torch.tensor([[1.0, -1.0]])
    log_p = np.log(np.exp([1.0, -1.0]) / np.exp([1.0, -1.0]).sum())
    expected = -(0.85 * log_p[0] + 0.15 * log_p[1])
    assert float(loss(logits, torch.tensor([0]))) == pytest.approx(expected, rel=1e-6)


def test_focal_hand_value_with_scalar_alpha():
    loss = create_loss(LossSpec("focal", {"gamma": 2.0, "alpha": 0.25}), np.array([5, 5, 5]))
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    p = math.exp(2) / (math.exp(2) + 2)
    assert float(loss(logits, torch.tensor([0]))) == pytest.approx(-0.25 * (1 - p) ** 2 * math.log(p), rel=1e-6)


def test_class_balanced_weights_follow_the_effective_number():
    counts = np.array([1000, 10])
    w = effective_number_weights(counts, beta=0.99)
    raw = (1 - 0.99) / (1 - 0.99 ** counts)
    assert np.allclose(w, raw / raw.sum() * 2) and w[1] > w[0]
    loss = create_loss(LossSpec("cb_focal", {"beta": 0.99, "gamma": 0.0}), counts)
    logits = torch.tensor([[0.5, 0.1]])
    ce = float(torch.nn.functional.cross_entropy(logits, torch.tensor([1])))
    assert float(loss(logits, torch.tensor([1]))) == pytest.approx(w[1] * ce, rel=1e-5)  # gamma 0: weighted CE


@pytest.fixture(scope="module")
def real_batch(pbc_subset):
    """16 real crops (2 per class) decoded by the engine's pipeline, normalised like training."""
    from bmengine.training.augment import normalize
    from bmengine.training.dataset import ImageFolder
    from bmengine.training.image_cache import decode_files

    data = ImageFolder.scan(pbc_subset)
    idx = np.concatenate([np.flatnonzero(data.labels == c)[:2] for c in range(8)])
    images, _ = decode_files([data.files[i] for i in idx], 48)
    x = normalize(torch.from_numpy(images), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return x, torch.from_numpy(data.labels[idx])


def _train_steps(model, x, y, loss_fn, steps: int = 3, lr: float = 0.05) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _assert_onnx_matches(model, x, path) -> None:
    import onnxruntime as ort

    from bmengine.training.export import export_onnx

    model.eval()
    export_onnx(model, path, x.shape[-1], opset=17)
    with torch.no_grad():
        expected = model(x[:4]).numpy()
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x[:4].numpy()})
    assert np.allclose(got, expected, rtol=1e-3, atol=1e-3), np.abs(got - expected).max()


@pytest.mark.parametrize("attention", ATTENTION.names())
def test_every_attention_trains_a_step_in_regnet_on_real_crops_and_exports(attention, real_batch, tmp_path):
    x, y = real_batch
    torch.manual_seed(0)
    model = create_model(ModelSpec("regnetx_002", attention, 8, input_size=48))
    losses = _train_steps(model, x, y, torch.nn.functional.cross_entropy)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]  # it learns the batch
    _assert_onnx_matches(model, x, tmp_path / f"{attention}.onnx")


@pytest.mark.parametrize("loss_name", LOSSES.names())
def test_every_loss_trains_on_real_crops(loss_name, real_batch):
    x, y = real_batch
    torch.manual_seed(0)
    model = create_model(ModelSpec("regnetx_002", "none", 8, input_size=48))
    loss = create_loss(LossSpec(loss_name), np.array([50, 40, 30, 20, 10, 5, 3, 2]))
    losses = _train_steps(model, x, y, loss)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


BACKBONE_ATTENTION = {"regnetx_002": "eca", "resnet50": "se", "resnext50_32x4d": "cbam"}


@pytest.mark.parametrize("backbone", [b for b in __import__("bmengine.engine.model.networks", fromlist=["BACKBONES"])
                                      .BACKBONES.names() if b.startswith(("resnet", "resnext", "densenet",
                                                                          "mobilenet", "efficientnet", "swin",
                                                                          "coatnet", "multiscale")) or b == "regnetx_002"])
def test_backbone_trains_a_step_and_exports_to_matching_onnx(backbone, real_batch, tmp_path):
    import onnxruntime as ort

    from bmengine.training.export import export_onnx

    x, y = real_batch
    x = x[:, :, :32, :32].contiguous()  # 32 px keeps 7 backbones fast; transformers are built for it
    torch.manual_seed(0)
    model = create_model(ModelSpec(backbone, BACKBONE_ATTENTION.get(backbone, "none"), 8, input_size=32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    model.eval()
    path = tmp_path / f"{backbone}.onnx"
    export_onnx(model, path, 32, opset=17)
    with torch.no_grad():
        expected = model(x[:4]).numpy()
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x[:4].numpy()})
    assert np.allclose(got, expected, rtol=1e-3, atol=1e-3), np.abs(got - expected).max()


def test_attention_outside_regnet_and_resnet_is_refused():
    with pytest.raises(ValueError, match="use --attention none"):
        create_model(ModelSpec("densenet201", "se", 8))


def test_coatnet_refuses_an_input_size_its_windows_cannot_tile():
    # 112 px leaves a 3.5-token last stage: timm would fail mid-forward with a bare shape error
    with pytest.raises(ValueError, match=r"multiple of 32, got 112; try 96 or 128"):
        create_model(ModelSpec("coatnet_0", "none", 8, input_size=112))
    assert create_model(ModelSpec("coatnet_0", "none", 8, input_size=96)) is not None


@pytest.mark.parametrize("backbone,slot", [("resnet50", "conv3"), ("regnetx_002", "conv2")])
def test_attention_sits_in_every_block(backbone, slot):
    from bmengine.engine.model.networks.attention.eca import EfficientChannelAttention

    model = create_model(ModelSpec(backbone, "eca", 8))
    blocks = [m for m in model.modules() if hasattr(m, slot) and hasattr(m, "se")]
    assert blocks and all(isinstance(b.se, EfficientChannelAttention) for b in blocks)


def test_gce_hand_values_and_limits():
    logits = torch.tensor([[1.0, 0.0, -1.0]])
    p = math.exp(1) / (math.exp(1) + 1 + math.exp(-1))
    gce = create_loss(LossSpec("gce", {"q": 0.7}), np.array([5, 5, 5]))
    assert float(gce(logits, torch.tensor([0]))) == pytest.approx((1 - p**0.7) / 0.7, rel=1e-6)
    mae = create_loss(LossSpec("gce", {"q": 1.0}), np.array([5, 5, 5]))
    assert float(mae(logits, torch.tensor([0]))) == pytest.approx(1 - p, rel=1e-6)
    near_ce = create_loss(LossSpec("gce", {"q": 1e-4}), np.array([5, 5, 5]))
    assert float(near_ce(logits, torch.tensor([0]))) == pytest.approx(-math.log(p), rel=1e-3)


def test_offline_balancing_grows_only_training_minorities(real_batch):
    from bmengine.training.balance import balance_offline

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (20, 16, 16, 3), dtype=np.uint8)
    labels = np.array([0] * 12 + [1] * 5 + [2] * 3)
    train_idx = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 17, 18])  # 10 / 4 / 2 for training
    out_images, out_labels, out_train, source = balance_offline(images, labels, train_idx, target=10, seed=1)
    assert np.bincount(out_labels[out_train]).tolist() == [10, 10, 10]
    assert len(out_images) == 20 + 6 + 8 and (source[:20] == -1).all()
    copies = np.arange(20, len(out_images))
    assert set(source[copies]) <= set(train_idx) and set(source[copies]).isdisjoint({10, 11, 16, 19})  # no val crop
    assert (out_labels[copies] == labels[source[copies]]).all()
    no_jitter, *_ = balance_offline(images, labels, train_idx, target=10, seed=1, jitter=0.0)
    first = no_jitter[20]
    src = images[source[20]]
    variants = [np.rot90(src, k) for k in range(4)] + [np.rot90(src, k)[:, ::-1] for k in range(4)]
    assert any(np.array_equal(first, v) for v in variants)  # a flip/rotation of its source


def test_training_with_offline_balancing(pbc_subset, tmp_path):
    from bmengine.training.trainer import TrainConfig, train

    logs = []
    summary = train(TrainConfig(data_dir=str(pbc_subset), run_dir=str(tmp_path), backbone="regnetx_002", resize=40,
                                crop=32, batch_size=16, epochs=1, max_steps_per_epoch=1, limit_per_class=6,
                                balance_to=8), log=logs.append)
    assert any("grown to 64 crops" in m for m in logs)  # 8 classes x 8
    assert math.isfinite(summary["history"][0]["train_loss"])


def test_gmmce_hand_value_drops_the_middle_negatives():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -2.0, 3.0, 0.5, -0.5]])
    # negatives by logit: 3 (5), 1 (1), 0.5 (6), 0 (2), -0.5 (7), -1 (3), -2 (4); k=2 keeps 5, 1 and 4, 3
    kept = [2.0, 3.0, 1.0, -2.0, -1.0]
    expected = -2.0 + math.log(sum(math.exp(v) for v in kept))
    gmmce = create_loss(LossSpec("gmmce", {"k": 2}), np.ones(8))
    assert float(gmmce(logits, torch.tensor([0]))) == pytest.approx(expected, rel=1e-6)


def test_gmmce_is_cross_entropy_when_every_negative_is_kept():
    logits = torch.randn(6, 7, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 1, 2, 3, 4, 6])
    gmmce = create_loss(LossSpec("gmmce", {"k": 3}), np.ones(7))  # 6 negatives = top-3 + bottom-3
    assert float(gmmce(logits, target)) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target)),
                                                         rel=1e-6)


def test_asae_peaks_are_the_top_k_local_maxima():
    from bmengine.engine.model.networks.attention.asae import peak_mask

    a = torch.tensor([[[[9.0, 1.0, 0.0, 0.0, 5.0],
                        [1.0, 1.0, 0.0, 0.0, 0.0],
                        [0.0, 0.0, 7.0, 0.0, 0.0],
                        [0.0, 0.0, 0.0, 0.0, 0.0],
                        [6.0, 0.0, 0.0, 0.0, 8.0]]]])
    mask = peak_mask(a, k=3)
    assert mask.sum() == 3
    assert {tuple(i) for i in mask[0, 0].nonzero().tolist()} == {(0, 0), (4, 4), (2, 2)}


def test_asae_trains_as_the_mean_of_suppression_and_enhancement_and_is_identity_at_inference():
    from bmengine.engine.model.networks import STAGE_ATTENTION

    layer = STAGE_ATTENTION.create("asae", top_k=1, radius=1)
    assert not list(layer.parameters())  # parameter-free
    x = torch.zeros(1, 2, 5, 5)
    x[0, :, 1, 1] = 4.0  # the one peak of the channel mean
    x[0, 0, 4, 4] = 1.0
    suppressed = x.clone()
    suppressed[0, :, 0:3, 0:3] = 0.0  # 3x3 around the peak
    enhanced = x * torch.sigmoid(x.mean(dim=1, keepdim=True))
    assert torch.allclose(layer.train()(x), (suppressed + enhanced) / 2)
    assert torch.equal(layer.eval()(x), x)


@pytest.mark.parametrize("backbone,stage", [("resnet50", "layer3"), ("regnetx_002", "s3")])
def test_asae_sits_after_the_third_stage_trains_and_exports_without_a_trace(backbone, stage, real_batch, tmp_path):
    import onnxruntime as ort

    from bmengine.training.export import export_onnx
    from bmengine.engine.model.networks.attention.asae import ASAE

    x, y = real_batch
    x = x[:, :, :32, :32].contiguous()
    torch.manual_seed(0)
    model = create_model(ModelSpec(backbone, "asae", 8, input_size=32))
    assert isinstance(getattr(model, stage)[-1], ASAE)
    assert sum(isinstance(m, ASAE) for m in model.modules()) == 1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss = torch.nn.functional.cross_entropy(model.train()(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert math.isfinite(loss.item())
    model.eval()
    path = tmp_path / "asae.onnx"
    export_onnx(model, path, 32, opset=17)
    with torch.no_grad():
        expected = model(x[:4]).numpy()
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x[:4].numpy()})
    assert np.allclose(got, expected, rtol=1e-3, atol=1e-3)
