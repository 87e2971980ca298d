"""Backend registry and selection.

``backend=None`` picks where the data lives: NumPy arrays and torch CPU
tensors use "numpy"; CuPy arrays and torch CUDA tensors use "triton". A
backend that cannot serve the input raises ``BackendUnavailableError``
naming what is missing; data is never moved between devices.
"""

from __future__ import annotations

import os

from ..arrays import TensorInfo
from ..errors import BackendUnavailableError

__all__ = ["select", "available", "BACKENDS"]

BACKENDS = ("numpy", "triton")
_instances: dict[str, object] = {}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _make(name: str):
    if name not in _instances:
        if name == "numpy":
            from .reference import NumpyBackend

            _instances[name] = NumpyBackend()
        else:
            from .triton import TritonBackend  # raises BackendUnavailableError if missing

            _instances[name] = TritonBackend()
    return _instances[name]


def select(info: TensorInfo, backend: str | None = None):
    """The backend object that serves an input described by ``info``."""
    if backend is not None and backend not in BACKENDS:
        raise BackendUnavailableError(
            f"backend={backend!r} is unknown; accepted: None (automatic), "
            + ", ".join(repr(b) for b in BACKENDS)
        )
    name = backend or ("triton" if info.on_gpu else "numpy")
    if name == "numpy" and info.on_gpu:
        raise BackendUnavailableError(
            f"backend='numpy' cannot serve a {info.framework} array on {info.device}; gpuquant "
            "never moves data between devices: use backend='triton' (or None) or copy it to the CPU"
        )
    if name == "triton" and not info.on_gpu:
        if not (info.framework == "torch" and _interpreting()):
            raise BackendUnavailableError(
                f"backend='triton' needs a CUDA torch tensor or a CuPy array, got a "
                f"{info.framework} array on the CPU (torch CPU tensors are accepted only under "
                "TRITON_INTERPRET=1); use backend='numpy' for CPU data"
            )
    return _make(name)


def available() -> list[str]:
    """Backends that can run on this machine now."""
    names = ["numpy"]
    try:
        _make("triton")
        names.append("triton")
    except BackendUnavailableError:
        pass
    return names
