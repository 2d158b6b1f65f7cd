"""Class-per-folder datasets and splits live in the engine (``bmengine.engine.dataset``): `eval`, the
demo's sample slides and training all read them, and the engine never imports training."""

from bmengine.engine.dataset import IMAGE_SUFFIXES, ImageFolder, stratified_split

__all__ = ["IMAGE_SUFFIXES", "ImageFolder", "stratified_split"]
