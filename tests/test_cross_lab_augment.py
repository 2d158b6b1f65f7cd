"""Cross-lab augmentation (training/augment.py): each operation keeps shape/dtype/range, is seeded,
does what it claims on a real PBC crop, leaves the basic recipe bit-for-bit as before, and the
preset reaches the exported model card."""

import json
import math
import os
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the [train] extra")

from bmengine.training import augment as A  # noqa: E402

from conftest import BMENGINE, pbc_files  # noqa: E402


@pytest.fixture(scope="module")
def pbc_batch() -> torch.Tensor:
    """8 real PBC crops (one per class) decoded and resized to 112 px by the engine's pipeline."""
    from bmengine.training.image_cache import decode_files
    from conftest import PBC

    classes = sorted(p.name for p in PBC.iterdir() if p.is_dir())
    images, errors = decode_files([pbc_files(c, 1)[0] for c in classes], 112)
    assert not any(errors)
    return torch.from_numpy(images)


def _old_augment(images, cfg, generator):
    """The augmentation before the cross-lab work, verbatim: ``basic`` must reproduce it."""
    n, h, w, _ = images.shape
    tops = torch.randint(0, h - cfg.crop + 1, (n,), generator=generator)
    lefts = torch.randint(0, w - cfg.crop + 1, (n,), generator=generator)
    out = torch.stack([images[i, t : t + cfg.crop, l : l + cfg.crop] for i, (t, l) in enumerate(zip(tops, lefts))])
    out = out.float().div_(255.0)
    flip_h = torch.rand(n, generator=generator) < 0.5
    flip_v = torch.rand(n, generator=generator) < 0.5
    out[flip_h] = out[flip_h].flip(2)
    out[flip_v] = out[flip_v].flip(1)
    k = torch.randint(0, 4, (n,), generator=generator)
    for turns in (1, 2, 3):
        sel = k == turns
        if sel.any():
            out[sel] = torch.rot90(out[sel], turns, dims=(1, 2))
    b = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * cfg.brightness
    c = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * cfg.contrast
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return (((out - mean) * c + mean) * b).clamp_(0, 1)


def test_basic_preset_reproduces_the_old_augmentation(pbc_batch):
    cfg = A.make_augment_config("basic", crop=96)
    assert cfg == A.AugmentConfig(crop=96)
    new = A.augment(pbc_batch, cfg, torch.Generator().manual_seed(3))
    old = _old_augment(pbc_batch, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(new, old)


@pytest.mark.parametrize("preset", sorted(A.PRESETS))
def test_every_preset_keeps_shape_range_and_is_seeded(pbc_batch, preset):
    cfg = A.make_augment_config(preset, crop=96)
    a = A.augment(pbc_batch, cfg, torch.Generator().manual_seed(7))
    b = A.augment(pbc_batch, cfg, torch.Generator().manual_seed(7))
    c = A.augment(pbc_batch, cfg, torch.Generator().manual_seed(8))
    assert a.shape == (8, 96, 96, 3) and a.dtype == torch.float32
    assert float(a.min()) >= 0 and float(a.max()) <= 1 and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def _dark_area(images: torch.Tensor) -> np.ndarray:
    """Pixels of the stained nucleus: a plain threshold on the green channel (0..1 float NHWC)."""
    return (images[..., 1] < 0.45).sum(dim=(1, 2)).numpy().astype(float)


def test_zoom_2x_makes_a_real_cell_four_times_larger(pbc_batch):
    x = pbc_batch.float() / 255
    lymphocyte = x[[4]]  # the lymphocyte: its round nucleus is well inside the frame
    base = _dark_area(lymphocyte)[0]
    assert base > 200
    assert _dark_area(A.zoom(lymphocyte, torch.tensor([2.0])))[0] / base == pytest.approx(4.0, rel=0.15)
    assert _dark_area(A.zoom(lymphocyte, torch.tensor([0.7])))[0] / base == pytest.approx(0.49, rel=0.2)
    same = A.zoom(x, torch.ones(len(x)))
    assert same.shape == x.shape and (same - x).abs().max() < 1e-5  # factor 1 is the identity


def _sharpness(images: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of the grey image, per image (float NHWC in 0..1)."""
    g = images.mean(-1)
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] - g[:, 1:-1, 2:]
    return lap.var(dim=(1, 2))


def test_zoom_ins_from_a_detailed_cache_are_sharp_and_at_1x_are_the_engines_picture(pbc_batch):
    """From the 112 px cache a 2x zoom upsamples 56 px: a soft picture no real lab shows. Taken from
    the same crops decoded at 224 px it keeps the detail of an unzoomed crop."""
    from bmengine.training.image_cache import decode_files
    from conftest import PBC

    classes = sorted(p.name for p in PBC.iterdir() if p.is_dir())
    detail, errors = decode_files([pbc_files(c, 1)[0] for c in classes], 224)
    assert not any(errors)
    detail = torch.from_numpy(detail)
    same = A.zoom_in_from_detail(detail, torch.ones(8), 112)
    assert (same * 255 - pbc_batch.float()).abs().mean() < 1.0  # the engine's own 112 px picture, near enough
    soft = A.zoom(pbc_batch.float() / 255, torch.full((8,), 2.0))
    sharp = A.zoom_in_from_detail(detail, torch.full((8,), 2.0), 112)
    unzoomed = _sharpness(pbc_batch.float() / 255)
    assert (_sharpness(sharp) > 3 * _sharpness(soft)).all()
    assert _sharpness(sharp).mean() > 0.5 * unzoomed.mean()  # about as sharp as an unzoomed crop
    assert (sharp - soft).abs().mean() < 0.03  # the same field of view: only the detail differs


def test_augment_takes_only_zoom_ins_from_the_detail(pbc_batch):
    from bmengine.training.image_cache import decode_files
    from conftest import PBC

    classes = sorted(p.name for p in PBC.iterdir() if p.is_dir())
    detail = torch.from_numpy(decode_files([pbc_files(c, 1)[0] for c in classes], 224)[0])
    cfg = A.make_augment_config("scale", crop=112, zoom_range=(0.7, 2.2), flips=False, rot90=False,
                                brightness=0.0, contrast=0.0, zoom_detail=2.0)
    plain = A.augment(pbc_batch, cfg, torch.Generator().manual_seed(5))
    detailed = A.augment(pbc_batch, cfg, torch.Generator().manual_seed(5), detail)
    g = torch.Generator().manual_seed(5)  # the factors augment drew
    factors = torch.exp(A._uniform(8, math.log(0.7), math.log(2.2), g))
    ins = factors > 1
    assert ins.any() and (~ins).any()
    assert torch.equal(plain[~ins], detailed[~ins])  # zoom-outs as before
    assert (_sharpness(detailed[ins]) > _sharpness(plain[ins])).all()


def test_hed_jitter_scales_the_haematoxylin_channel_and_identity_is_identity(pbc_batch):
    x = pbc_batch.float() / 255
    n = len(x)
    assert (A.hed_jitter(x, torch.ones(n, 3), torch.zeros(n, 3)) - x).abs().max() < 1e-5
    more_h = A.hed_jitter(x, torch.tensor([[1.3, 1.0, 1.0]]).expand(n, 3), torch.zeros(n, 3))

    def hed(img):
        od = -torch.log(img + A._OD_EPS) + math.log(1 + A._OD_EPS)
        return od @ A.HED_FROM_RGB

    before, after = hed(x), hed(more_h)
    stained = (before[..., 0] > 0.3) & (more_h.amin(dim=-1) > 0.02)  # nucleus pixels not clipped to black
    assert stained.sum() > 500
    ratio = after[..., 0][stained] / before[..., 0][stained]
    assert float(ratio.median()) == pytest.approx(1.3, abs=0.02)
    assert (after[..., 1:][stained] - before[..., 1:][stained]).abs().median() < 0.01  # E and D unchanged
    # the hue of the cell changes: a config of zero strength does not touch the image
    cfg = A.make_augment_config("basic", crop=112, flips=False, rot90=False, brightness=0.0, contrast=0.0)
    assert torch.equal(A.augment(pbc_batch, cfg, torch.Generator().manual_seed(0)), x)
    stain = A.augment(pbc_batch, A.replace(cfg, hed_scale=0.3, hed_shift=0.05), torch.Generator().manual_seed(0))
    assert (stain - x).abs().mean() > 0.01


def test_hue_tint_gamma_blur_noise_jpeg_do_what_they_say(pbc_batch):
    x = pbc_batch.float() / 255
    n = len(x)
    assert (A.hue_saturation(x, torch.zeros(n), torch.ones(n)) - x).abs().max() < 1e-5
    grey = A.hue_saturation(x, torch.zeros(n), torch.zeros(n))
    assert float((grey.amax(-1) - grey.amin(-1)).max()) < 1e-4  # saturation 0: no colour left
    turned = A.hue_saturation(x, torch.full((n,), 60.0), torch.ones(n))
    assert (turned - x).abs().mean() > 0.02
    base = A.make_augment_config("basic", crop=112, flips=False, rot90=False, brightness=0.0, contrast=0.0)

    def run(**kw):
        return A.augment(pbc_batch, A.replace(base, **kw), torch.Generator().manual_seed(1))

    tinted = run(tint=0.3)
    gain = tinted.mean(dim=(1, 2)) / x.mean(dim=(1, 2))
    assert float((gain - 1).abs().max()) > 0.05 and float(gain.max()) < 1.31
    blurred = run(blur_p=1.0, blur_sigma=(1.5, 1.5))
    def hf(t):
        return float((t[:, 1:] - t[:, :-1]).abs().mean())
    assert hf(blurred) < 0.7 * hf(x)
    noisy = run(noise_p=1.0, noise_std=(0.03, 0.03))
    assert float((noisy - x).std()) == pytest.approx(0.03, rel=0.15)
    jpeg = run(jpeg_p=1.0, jpeg_quality=(30, 30))
    assert 0.002 < float((jpeg - x).abs().mean()) < 0.05
    none = run(blur_p=1e-9, noise_p=1e-9, jpeg_p=1e-9)  # enabled but no image drawn: unchanged
    assert torch.equal(none, x)


def test_random_convolution_keeps_each_images_tone_and_shapes_but_changes_its_colours(pbc_batch):
    x = pbc_batch.float() / 255
    n = len(x)
    g = torch.Generator().manual_seed(3)
    sizes = torch.tensor([1, 3, 5, 7] * (n // 4))
    full = A.random_convolution(x, sizes, torch.ones(n), g)
    assert full.shape == x.shape and float(full.min()) >= 0 and float(full.max()) <= 1
    assert torch.equal(A.random_convolution(x, sizes, torch.zeros(n), g), x)  # mix 0: the image itself
    # each image's mean tone is kept (up to clipping), its colours are not
    assert float((full.mean(dim=(1, 2)) - x.mean(dim=(1, 2))).abs().max()) < 0.06
    assert float((full - x).abs().mean()) > 0.03
    # shapes stay: the edges of the convolved image are where the original's are
    def edges(t):
        return ((t[:, 1:, :-1] - t[:, :-1, :-1]) ** 2 + (t[:, :-1, 1:] - t[:, :-1, :-1]) ** 2).sum(-1).sqrt()

    for a, b in zip(edges(full), edges(x)):
        assert np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1] > 0.35
    base = A.make_augment_config("basic", crop=112, flips=False, rot90=False, brightness=0.0, contrast=0.0)
    half = A.augment(pbc_batch, A.replace(base, randconv_p=0.5), torch.Generator().manual_seed(4))
    changed = (half - x).abs().amax(dim=(1, 2, 3)) > 1e-4
    assert 0 < int(changed.sum()) < n and torch.equal(half[~changed], x[~changed])
    assert A.parse_augment_options(["randconv_p=0.5", "randconv_mix=0.8"]) == {"randconv_p": 0.5, "randconv_mix": 0.8}


def test_zoom_p_and_colour_p_leave_the_rest_of_the_batch_alone(pbc_batch):
    x = pbc_batch.float() / 255
    base = A.make_augment_config("basic", crop=112, flips=False, rot90=False, brightness=0.0, contrast=0.0)
    half = A.augment(pbc_batch, A.replace(base, hue=40.0, tint=0.2, hed_scale=0.3, colour_p=0.5,
                                          zoom_range=(1.5, 2.0), zoom_p=0.5), torch.Generator().manual_seed(2))
    changed = (half - x).abs().amax(dim=(1, 2, 3)) > 0.02
    assert 0 < int(changed.sum()) < len(x)  # some images were left as they were
    assert float((half - x).abs()[~changed].max()) < 1e-4


def test_options_parse_and_unknown_names_are_refused():
    opts = A.parse_augment_options(["zoom_range=0.7,2.2", "hue=90", "flips=false", "jpeg_quality=40,90"])
    assert opts == {"zoom_range": (0.7, 2.2), "hue": 90.0, "flips": False, "jpeg_quality": (40, 90)}
    cfg = A.make_augment_config("cross-lab", crop=96, **opts)
    assert cfg.zoom_range == (0.7, 2.2) and cfg.hue == 90.0 and cfg.jpeg_p > 0 and cfg.crop == 96
    with pytest.raises(KeyError):
        A.make_augment_config("nonsense")
    with pytest.raises(ValueError):
        A.parse_augment_options(["wobble=1"])
    with pytest.raises(ValueError):
        A.parse_augment_options(["zoom_range=2,1"])


def test_preset_is_recorded_in_checkpoint_and_card(tmp_path, pbc_subset):
    """A tiny train + export in this process (no second interpreter start: the test stays fast)."""
    from pathlib import Path

    from bmengine.training.export import ExportConfig, export
    from bmengine.training.trainer import TrainConfig, train

    run = tmp_path / "run"
    cfg = TrainConfig(data_dir=str(pbc_subset), run_dir=str(run), backbone="regnetx_002", attention="none",
                      epochs=1, batch_size=16, resize=72, crop=64, max_steps_per_epoch=1, limit_per_class=4,
                      val_fraction=0.25, augment="cross-lab", augment_options={"zoom_range": (0.8, 1.6)})
    train(cfg, log=lambda _: None)
    out = run / "export" / "aug.onnx"
    export(ExportConfig(Path(run / "checkpoints" / "last.pt"), out, int8=False, evaluate=False), log=lambda _: None)
    card = json.loads(out.with_name("aug.onnx.card.json").read_text())
    recipe = card["training"]["augmentation"]
    assert recipe["preset"] == "cross-lab" and recipe["options"] == {"zoom_range": [0.8, 1.6]}
    assert recipe["config"]["zoom_range"] == [0.8, 1.6] and recipe["config"]["jpeg_p"] == 0.3
    from bmengine.engine.backends import load_backend

    assert load_backend(out).card.training["augmentation"]["preset"] == "cross-lab"  # the engine accepts the card


def test_train_cli_refuses_an_unknown_preset(tmp_path):
    result = subprocess.run(BMENGINE + ["train", str(tmp_path), "--out", str(tmp_path / "r"), "--augment", "wild"],
                            capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == 2 and "unknown augmentation preset" in result.stderr


def test_a_run_with_zoom_detail_caches_the_larger_images_and_trains(tmp_path, pbc_subset):
    from bmengine.training.trainer import TrainConfig, train

    lines = []
    cfg = TrainConfig(data_dir=str(pbc_subset), run_dir=str(tmp_path / "run"), backbone="regnetx_002", attention="none",
                      epochs=1, batch_size=8, resize=72, crop=64, max_steps_per_epoch=2, limit_per_class=4,
                      val_fraction=0.25, augment="cross-lab", augment_options={"zoom_detail": 2.0})
    summary = train(cfg, log=lines.append)
    assert math.isfinite(summary["history"][0]["train_loss"])
    assert any(line.startswith("zoom-ins from images cached at 144 px") for line in lines)
    assert len(list((tmp_path / "run" / "cache").glob("images-*.npy"))) == 2  # 72 px and 144 px
    with pytest.raises(ValueError, match="zoom_detail does not combine with balance_to"):
        TrainConfig(data_dir="d", run_dir="r", augment="cross-lab", augment_options={"zoom_detail": 2.0}, balance_to=50)
