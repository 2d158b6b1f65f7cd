"""Whether ONNX Runtime's fast int8 kernels are exact on this CPU, and the session entry when not.

On x86 ONNX Runtime fuses each Q/DQ convolution into a uint8 x int8 kernel. With VNNI (Intel since
Cascade Lake, AMD since Zen 4) VPDPBUSD adds the products in int32: exact. Without it, VPMADDUBSW
adds each pair of products into a saturating int16, and 2 x 255 x 127 overflows it: the answer
then depends on the lab's CPU. Measured on an AMD EPYC with AVX2 only (2026-11-27), the shipped
default: PBC validation macro-F1 0.936 instead of 0.981, tecom accuracy 0.23 instead of 0.43
(benchmarks/results/int8-saturation.md).
"""

from __future__ import annotations

from pathlib import Path

#: ONNX Runtime's own remedy: weights rewritten to uint8 and uint8 x uint8 kernels that widen before
#: adding. Key and wording: onnxruntime/core/session/onnxruntime_session_options_config_keys.h,
#: kOrtSessionOptionsAvx2PrecisionMode ("x64 SSE4.1/AVX2/AVX512(with no VNNI) has overflow problem
#: with quantized matrix multiplication with U8S8"). The runtime reads it only where its U8U8 and
#: U8S8 kernels differ (core/optimizer/graph_transformer_utils.cc, MlasPlatformU8S8Overflow), which
#: can include VNNI CPUs, where it would only cost speed: so it is set only where VNNI is not seen.
EXACT_INT8_ON_X86 = ("session.x64quantprecision", "1")

VNNI = ("avx512_vnni", "avx_vnni")


def int8_dot_product(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The instruction ONNX Runtime's int8 kernels can add products with: "avx512_vnni" or
    "avx_vnni", else "none"; "unknown" where ``cpuinfo`` cannot be read (not Linux)."""
    try:
        flags = next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return "unknown"
    words = set(flags.split(":", 1)[1].split())
    return next((name for name in VNNI if name in words), "none")


def fast_int8_is_exact() -> bool:
    """True where VNNI is seen; False without it or where the CPU cannot be read (ARM builds of ONNX
    Runtime compile the entry out, so setting it there is harmless)."""
    return int8_dot_product() in VNNI
