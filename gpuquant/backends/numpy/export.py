"""The NumPy backend's export formats: compressed-tensors' pack-quantized words and GGUF blocks.

The formats themselves are written once, in NumPy, in gpuquant.core.pack_quantized and
gpuquant.core.ggml_blocks (the references the Triton export kernels are checked against);
here they are applied to the caller's CPU arrays (NumPy, or torch CPU tensors).
"""

from __future__ import annotations

import numpy as np

from ...config import QuantConfig
from ...core.frameworks import prepare, to_numpy
from ...core.ggml_blocks import quantize_blocks
from ...core.layout import Layout
from ...core.pack_quantized import words_from_codes_bytes
from ...errors import InvalidShapeError

__all__ = ["quantize_pack32", "quantize_gguf"]


def _host(a, name: str) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else to_numpy(*prepare(a, name, require_float=False))


def quantize_pack32(be, x2, scale, zero_point, config: QuantConfig) -> np.ndarray:
    """int32 words of a 2-D weight quantized by ``be`` (a NumpyBackend) with given qparams."""
    if config.nibble_order != "low_first" or len(x2.shape) != 2:
        raise InvalidShapeError(f"pack-quantized words take a 2-D weight and nibble_order "
                                f"'low_first'; got shape {tuple(x2.shape)}, {config.nibble_order!r}")
    x2 = _host(x2, "x")
    rows, cols = x2.shape
    layout = Layout.of((rows, cols), config)
    codes = be.quantize(x2, layout, config, _host(scale, "scale").reshape(layout.unit_shape),
                        _host(zero_point, "zero_point").reshape(layout.unit_shape))
    return words_from_codes_bytes(codes, config.bits, config.symmetric, cols)


def quantize_gguf(x, scheme: str, bf16_bits: bool = False) -> np.ndarray:
    """GGUF blocks of a CPU array (NumPy floats, bfloat16 bits with ``bf16_bits``, or torch)."""
    return quantize_blocks(x if isinstance(x, np.ndarray) else _host(x, "x"), scheme, bf16_bits)
