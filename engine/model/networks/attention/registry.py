"""The attention registries.

``ATTENTION``: blocks placed inside every block of a backbone; each maps (N, C, H, W) to the same
shape. Constructor convention (as timm's layers): ``Block(channels, **options)``; blocks that
squeeze channels accept ``rd_channels`` (absolute) or ``rd_ratio`` and ignore what they do not use.

``STAGE_ATTENTION``: layers placed once, after a backbone stage (Wang et al.'s ASAE after ResNet
``layer3``); constructed with options only.
"""

from torch import nn

from bmengine.engine.registry import Registry

ATTENTION: Registry[nn.Module] = Registry("attention block")
STAGE_ATTENTION: Registry[nn.Module] = Registry("stage attention layer")
