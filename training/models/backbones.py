"""Backbones built with timm (from scratch: no weights can be downloaded) plus attention insertion."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from bmengine.training.models.attention import ATTENTION
from bmengine.training.registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone")


@dataclass(frozen=True)
class ModelSpec:
    backbone: str = "regnetx_032"
    attention: str = "se"
    num_classes: int = 8
    drop_rate: float = 0.0

    def to_dict(self) -> dict:
        return {"backbone": self.backbone, "attention": self.attention, "num_classes": self.num_classes}


def _timm(name: str, num_classes: int, drop_rate: float) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)


def _insert_after_group_conv(model: nn.Module, attention: str) -> nn.Module:
    """Hu et al. 2025: an attention block in every RegNet block, after the 3x3 group convolution.

    timm's RegNet ``Bottleneck`` runs ``conv2`` (the group conv) then ``se``; we put ours there.
    """
    if attention == "none":
        return model
    blocks = [m for m in model.modules() if hasattr(m, "conv2") and hasattr(m, "se")]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no RegNet-style blocks to put attention in")
    for block in blocks:
        channels = block.conv2.conv.out_channels
        block_in = block.conv1.conv.in_channels
        block.se = ATTENTION.create(attention, channels, rd_channels=max(8, int(round(block_in * 0.25))))
    return model


for _name in ("regnetx_002", "regnetx_004", "regnetx_008", "regnetx_016", "regnetx_032"):

    def _factory(spec: ModelSpec, _timm_name: str = _name) -> nn.Module:
        return _insert_after_group_conv(_timm(_timm_name, spec.num_classes, spec.drop_rate), spec.attention)

    BACKBONES.register(_name)(_factory)


def create_model(spec: ModelSpec) -> nn.Module:
    if spec.attention not in ATTENTION:
        raise KeyError(f"unknown attention block {spec.attention!r}; known: {', '.join(ATTENTION.names())}")
    return BACKBONES.create(spec.backbone, spec)
