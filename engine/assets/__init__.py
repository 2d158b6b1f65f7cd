"""Shipped defaults: the default model bundle and the sample slide stores of the demo."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
DEFAULT_MODEL = ASSETS / "models" / "pbc_coatnet0_cs_int8.onnx"
SAMPLE_SLIDES = ASSETS / "sample_slides"
