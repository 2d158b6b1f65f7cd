"""Feature-style randomisation (training/feature_style.py) and the two-view consistency term
(training/losses/consistency.py): what each changes inside the network, that inference never
sees them, and that a run trained with them records them and can be fine-tuned from."""

import json
import math

import pytest

torch = pytest.importorskip("torch", reason="training needs the [train] extra")

from bmengine.training.feature_style import (  # noqa: E402
    FeatureStyleConfig,
    attach_feature_style,
    dsu,
    mixstyle,
    style_stages,
)
from bmengine.training.losses.consistency import jensen_shannon  # noqa: E402


def _feature_map(seed: int = 0) -> torch.Tensor:
    """A batch of 6 maps with very different per-image, per-channel means and spreads (6 'styles')."""
    g = torch.Generator().manual_seed(seed)
    content = torch.randn((6, 5, 9, 9), generator=g)
    scale = torch.rand((6, 5, 1, 1), generator=g) * 4 + 0.5
    shift = torch.randn((6, 5, 1, 1), generator=g) * 3
    return content * scale + shift


def _normalised(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.var(dim=(2, 3), keepdim=True).add(1e-6).sqrt()
    return (x - mean) / std


@pytest.mark.parametrize("restyle", [mixstyle, dsu])
def test_restyling_keeps_each_maps_content_and_changes_its_statistics(restyle):
    x = _feature_map()
    out = restyle(x, FeatureStyleConfig(restyle.__name__, p=1.0, alpha=0.3), torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    assert torch.allclose(_normalised(out), _normalised(x), atol=1e-3)  # content kept
    assert (out.mean(dim=(2, 3)) - x.mean(dim=(2, 3))).abs().max() > 0.1  # style moved


def test_mixstyle_statistics_stay_between_the_batchs_own():
    x = _feature_map()
    out = mixstyle(x, FeatureStyleConfig("mixstyle", p=1.0, alpha=0.3), torch.Generator().manual_seed(2))
    means, new_means = x.mean(dim=(2, 3)), out.mean(dim=(2, 3))
    assert (new_means >= means.min(dim=0).values - 1e-4).all()
    assert (new_means <= means.max(dim=0).values + 1e-4).all()


def test_dsu_leaves_a_batch_of_one_style_alone_and_reaches_beyond_a_varied_one():
    """Its noise is scaled by how much the statistics vary across the batch."""
    same = _feature_map()[:1].repeat(6, 1, 1, 1)
    cfg = FeatureStyleConfig("dsu", p=1.0)
    assert torch.allclose(dsu(same, cfg, torch.Generator().manual_seed(3)), same, atol=1e-2)
    x = _feature_map()
    out = dsu(x, cfg, torch.Generator().manual_seed(3))
    means, new_means = x.mean(dim=(2, 3)), out.mean(dim=(2, 3))
    outside = (new_means < means.min(dim=0).values) | (new_means > means.max(dim=0).values)
    assert outside.any()  # styles the batch itself does not hold


@pytest.mark.parametrize("backbone", ["regnetx_002", "coatnet_0"])
@pytest.mark.parametrize("method", ["mixstyle", "dsu"])
def test_hooks_restyle_only_in_training_mode_and_leave_no_trace(backbone, method):
    from bmengine.engine.model.networks.backbones import ModelSpec, create_model

    torch.manual_seed(0)
    model = create_model(ModelSpec(backbone, "none", 8, input_size=64))
    x = torch.randn(4, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        reference = model(x)
    hooks = attach_feature_style(model, FeatureStyleConfig(method, p=1.0), seed=0)
    assert len(hooks._handles) == len(style_stages(model)) == 2
    with torch.no_grad():
        assert torch.equal(model(x), reference)  # eval: untouched
        assert hooks.calls == 0
        model.train()
        state = {k: v.clone() for k, v in model.state_dict().items()}
        restyled = model(x)
        model.load_state_dict(state)  # undo the batch-norm statistics this forward pass updated
        hooks.remove()
        plain = model(x)
        model.load_state_dict(state)
    assert hooks.calls == 2
    assert not torch.allclose(restyled, plain, atol=1e-4)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), reference)


def test_feature_style_config_refuses_nonsense():
    with pytest.raises(ValueError, match="unknown feature style 'styleswap'"):
        FeatureStyleConfig("styleswap")
    with pytest.raises(ValueError, match="p must be in"):
        FeatureStyleConfig("dsu", p=1.5)


def test_jensen_shannon_is_zero_for_agreement_log2_for_opposites_and_symmetric():
    a = torch.randn(5, 8)
    b = torch.randn(5, 8)
    assert jensen_shannon(a, a).item() == pytest.approx(0.0, abs=1e-6)
    sure = torch.tensor([[50.0, -50.0]])
    assert jensen_shannon(sure, -sure).item() == pytest.approx(math.log(2), abs=1e-4)
    assert jensen_shannon(a, b).item() == pytest.approx(jensen_shannon(b, a).item(), rel=1e-5)
    assert 0 < jensen_shannon(a, b).item() < math.log(2)


def test_a_run_with_both_records_them_and_a_finetune_reads_them_back(tmp_path, pbc_subset):
    from bmengine.training.checkpoint import load_checkpoint
    from bmengine.training.export import ExportConfig, export
    from bmengine.training.trainer import TrainConfig, train

    run = tmp_path / "run"
    lines = []
    cfg = TrainConfig(data_dir=str(pbc_subset), run_dir=str(run), backbone="regnetx_002", attention="none",
                      epochs=1, batch_size=8, resize=72, crop=64, max_steps_per_epoch=2, limit_per_class=4,
                      val_fraction=0.25, augment="cross-lab", consistency=4.0,
                      feature_style=FeatureStyleConfig("mixstyle", p=1.0))
    summary = train(cfg, log=lines.append)
    assert math.isfinite(summary["history"][0]["train_loss"])
    assert any("Jensen-Shannon weight 4.0" in line for line in lines)
    assert any("feature style: mixstyle" in line for line in lines)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["augmentation"]["consistency"] == {"views": 2, "weight": 4.0, "divergence": "jensen_shannon"}
    assert state["augmentation"]["feature_style"] == {"method": "mixstyle", "p": 1.0, "alpha": 0.1}
    again = TrainConfig(**{**state["config"], "run_dir": str(tmp_path / "again")})
    assert again.feature_style == FeatureStyleConfig("mixstyle", p=1.0) and again.consistency == 4.0
    out = run / "m.onnx"
    export(ExportConfig(run / "checkpoints" / "last.pt", out, int8=False, evaluate=False), log=lambda _: None)
    card = json.loads(out.with_name("m.onnx.card.json").read_text())
    assert card["training"]["augmentation"]["feature_style"]["method"] == "mixstyle"
