"""Backbones built with timm (from scratch: no weights can be downloaded), plus attention insertion.

Attention goes where the seed papers put it: in every RegNet block after the 3x3 group
convolution (Hu et al. 2025), and in every ResNet/ResNeXt bottleneck at the SE-ResNet position
(after the last 1x1 convolution, before the residual sum). Stage layers (Wang et al.'s ASAE) go once,
after ResNet ``layer3`` (RegNet: its third stage ``s3``). Other backbones take ``attention="none"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from bmengine.engine.model.networks.attention import ATTENTION, STAGE_ATTENTION
from bmengine.engine.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")


@dataclass(frozen=True)
class ModelSpec:
    backbone: str = "regnetx_032"
    attention: str = "se"
    num_classes: int = 8
    drop_rate: float = 0.0
    input_size: int = 112  # transformers (Swin V2, CoAtNet) are built for one input size

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, "attention": self.attention, "num_classes": self.num_classes,
                "input_size": self.input_size}


def _timm(name: str, spec: ModelSpec, **kwargs) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=spec.num_classes, drop_rate=spec.drop_rate, **kwargs)


def _attend(blocks: list[nn.Module], channels_of: Callable[[nn.Module], int], attention: str) -> None:
    """Put a fresh attention block into each block's ``se`` slot (timm runs it when not None)."""
    for block in blocks:
        in_channels = block.conv1.in_channels if isinstance(block.conv1, nn.Conv2d) else block.conv1.conv.in_channels
        block.se = ATTENTION.create(attention, channels_of(block), rd_channels=max(8, int(round(in_channels * 0.25))))


def _after_stage(model: nn.Module, stage: str, attention: str) -> None:
    setattr(model, stage, nn.Sequential(getattr(model, stage), STAGE_ATTENTION.create(attention)))


def _regnet(timm_name: str) -> Callable[[ModelSpec], nn.Module]:
    def factory(spec: ModelSpec) -> nn.Module:
        model = _timm(timm_name, spec)
        if spec.attention in STAGE_ATTENTION:
            _after_stage(model, "s3", spec.attention)
        elif spec.attention != "none":
            blocks = [m for m in model.modules() if hasattr(m, "conv2") and hasattr(m, "se")]
            _attend(blocks, lambda b: b.conv2.conv.out_channels, spec.attention)
        return model

    return factory


def _resnet(timm_name: str) -> Callable[[ModelSpec], nn.Module]:
    def factory(spec: ModelSpec) -> nn.Module:
        model = _timm(timm_name, spec)
        if spec.attention in STAGE_ATTENTION:
            _after_stage(model, "layer3", spec.attention)
        elif spec.attention != "none":
            blocks = [m for m in model.modules() if hasattr(m, "conv3") and hasattr(m, "se")]
            _attend(blocks, lambda b: b.conv3.out_channels, spec.attention)
        return model

    return factory


def _plain(timm_name: str, sized: bool = False, multiple_of: int = 1) -> Callable[[ModelSpec], nn.Module]:
    """``multiple_of``: input sizes the model's fixed attention windows accept (checked up front, since
    timm would only fail deep inside the first forward pass with a tensor-shape error)."""

    def factory(spec: ModelSpec) -> nn.Module:
        if spec.attention != "none":
            raise ValueError(f"{spec.backbone}: attention blocks go into RegNet and ResNet-family backbones; "
                             "use --attention none")
        if spec.input_size % multiple_of:
            lower = spec.input_size // multiple_of * multiple_of
            raise ValueError(f"{spec.backbone}: input size (--crop) must be a multiple of {multiple_of}, "
                             f"got {spec.input_size}; try {lower or multiple_of} or {lower + multiple_of}")
        return _timm(timm_name, spec, **({"img_size": spec.input_size} if sized else {}))

    return factory


for _name in ("regnetx_002", "regnetx_004", "regnetx_008", "regnetx_016", "regnetx_032"):
    BACKBONES.register(_name)(_regnet(_name))
BACKBONES.register("resnet50")(_resnet("resnet50"))
BACKBONES.register("resnext50_32x4d")(_resnet("resnext50_32x4d"))
BACKBONES.register("densenet201")(_plain("densenet201"))
BACKBONES.register("mobilenetv3_large_100")(_plain("mobilenetv3_large_100"))
BACKBONES.register("efficientnetv2_s")(_plain("efficientnetv2_s"))
BACKBONES.register("swinv2_tiny")(_plain("swinv2_tiny_window8_256", sized=True))
BACKBONES.register("coatnet_0")(_plain("coatnet_0_rw_224", sized=True, multiple_of=32))


@BACKBONES.register("coatnet_0_gn")
def _coatnet_gn(spec: ModelSpec) -> nn.Module:
    """CoAtNet-0 (``coatnet_0``) with GroupNorm (32 groups) instead of batch norm in its stem and
    convolutional stages (the transformer stages already use LayerNorm): no statistic of the training
    set's batches is frozen into the model, the ingredient cross-site studies blame (Tsutsui et al. 2023)."""
    import dataclasses

    import timm.models.maxxvit as maxxvit

    if spec.attention != "none":
        raise ValueError(f"{spec.backbone}: attention blocks go into RegNet and ResNet-family backbones; use --attention none")
    if spec.input_size % 32:
        raise ValueError(f"{spec.backbone}: input size (--crop) must be a multiple of 32, got {spec.input_size}")
    base = maxxvit.model_cfgs["coatnet_0_rw"]
    cfg = dataclasses.replace(base, conv_cfg=dataclasses.replace(base.conv_cfg, norm_layer="groupnorm"))
    return maxxvit.MaxxVit(cfg, img_size=spec.input_size, num_classes=spec.num_classes, drop_rate=spec.drop_rate)


@BACKBONES.register("regnetx_002_gn")
def _regnetx_002_gn(spec: ModelSpec) -> nn.Module:
    """RegNetX-200MF with GroupNorm (8 groups: every width of this net is a multiple of 8) in place of
    batch norm everywhere: the small, fast batch-norm-free counterpart of ``regnetx_002``."""
    import functools

    from timm.layers import GroupNormAct

    if spec.attention != "none":
        raise ValueError(f"{spec.backbone}: use --attention none")
    return _timm("regnetx_002", spec, norm_layer=functools.partial(GroupNormAct, num_groups=8))


@BACKBONES.register("multiscale_cross_attention")
def _multiscale(spec: ModelSpec) -> nn.Module:
    """Surekha et al.'s design: our own model, not a timm one (see models/multiscale.py)."""
    from bmengine.engine.model.networks.multiscale import MultiScaleCrossAttentionNet

    if spec.attention != "none":
        raise ValueError(f"{spec.backbone}: has its own attention; use --attention none")
    return MultiScaleCrossAttentionNet(spec.num_classes, drop_rate=spec.drop_rate)


def create_model(spec: ModelSpec) -> nn.Module:
    if spec.attention not in ATTENTION and spec.attention not in STAGE_ATTENTION:
        known = ", ".join(ATTENTION.names() + STAGE_ATTENTION.names())
        raise KeyError(f"unknown attention block {spec.attention!r}; known: {known}")
    return BACKBONES.create(spec.backbone, spec)
