"""The attention-block registry: every block maps (N, C, H, W) to the same shape.

Constructor convention (as timm's layers): ``Block(channels, **options)``; blocks that squeeze
channels accept ``rd_channels`` (absolute) or ``rd_ratio`` and ignore what they do not use.
"""

from torch import nn

from bmengine.training.registry import Registry

ATTENTION: Registry[nn.Module] = Registry("attention block")
