"""bmengine's training module: backbones, attention blocks, losses, samplers, metrics, export.

Importing this package needs no PyTorch; the modules that train do (the ``[train]`` extra).
"""
