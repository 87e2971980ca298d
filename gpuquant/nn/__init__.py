"""gq.nn: torch modules over gpuquant's QuantizedTensor (needs torch)."""

from .linear import ACTIVATIONS, QuantizedLinear

__all__ = ["ACTIVATIONS", "QuantizedLinear"]
