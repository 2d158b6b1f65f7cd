"""bmengine's inference engine: slide stores in, per-cell classes and per-slide differentials out."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bmengine")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
