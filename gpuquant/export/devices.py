"""Where export work runs: the choice of ``--device`` and moving arrays back to NumPy."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import QuantizationError

__all__ = ["converter", "host", "on_gpu"]


def converter(choice: str):
    """None for the CPU, else a function moving NumPy arrays to the GPU (CuPy or torch)."""
    if choice == "cpu":
        return None
    if choice not in ("auto", "cuda"):
        raise QuantizationError(f"device={choice!r}; accepted: 'auto', 'cpu', 'cuda'")
    try:
        from ..backends.triton import device_converter

        convert = device_converter()
    except QuantizationError:
        convert = None
    if convert is None and choice == "cuda":
        raise QuantizationError("--device cuda: no working GPU (needs CuPy or torch with CUDA, "
                                "and Triton: pip install 'gpuquant[gpu]')")
    return convert


def host(a: Any) -> np.ndarray:
    """A NumPy copy of a CuPy or torch array (the array itself if it is NumPy already)."""
    if hasattr(a, "get"):
        return a.get()  # CuPy
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def on_gpu(a: Any) -> bool:
    """True for CuPy arrays and torch CUDA tensors."""
    if hasattr(a, "get") and hasattr(a, "data"):
        return True  # CuPy
    return bool(getattr(getattr(a, "device", None), "type", "cpu") == "cuda")
