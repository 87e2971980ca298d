"""The float formats' NumPy reference: element/scale codecs and quantize/dequantize.

NumPy only. gpuquant.backends.triton.floats (the Triton side) follows the same
storage layout and functions; docs/ARCHITECTURE.md states the contract.
"""

from .reference import codes_shape, dequantize_float, quantize_float, unit_shape

__all__ = ["quantize_float", "dequantize_float", "unit_shape", "codes_shape"]
