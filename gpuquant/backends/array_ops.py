"""NumPy, torch and CuPy behind one small interface (``ArrayOps`` in backends/__init__.py).

The Triton launch plans allocate outputs and launch on the array's device and
current stream; the calibration searches (gpuquant.calibration.searches) are written
once against this interface and run on every framework. ``ops_for(x)`` gives
the adapter of an array. The torch and CuPy adapters stand side by side:
neither inherits from the other.

An adapter holds only what the libraries spell differently and a caller needs;
what they spell alike (``abs(a)``, ``a.cumsum(-1)``, ``a.sum(-1)``, ``a[:, index]``,
``reshape``, ``swapaxes``, arithmetic) the callers write directly.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import numpy as np

from ..core.frameworks import framework_of

__all__ = ["ops_for", "TorchOps", "CupyOps", "NumpyOps"]

_NO_GUARD = contextlib.nullcontext()


def _c_contiguous_host(a) -> np.ndarray:
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy()  # ascontiguousarray would make 0-d 1-d


class TorchOps:
    """torch tensors: CUDA ones on their device and current stream; CPU ones under
    TRITON_INTERPRET=1."""

    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        self._current = torch._C._cuda_getDevice if torch.cuda.is_available() else None

    # -- allocation, views, launches -------------------------------------------------
    def empty(self, shape, dtype: str, like):
        return self.torch.empty(tuple(shape), dtype=getattr(self.torch, dtype), device=like.device)

    def as_2d(self, x, rows: int, cols: int):
        x2 = x.reshape(rows, cols)
        return x2 if cols == 1 or x2.stride(1) == 1 else x2.contiguous()

    def row_stride(self, x2) -> int:
        return int(x2.stride(0))

    def is_contiguous(self, a) -> bool:
        return a.is_contiguous()

    def view_as(self, a, dtype: str):
        """The same memory with another element type (raises when misaligned)."""
        return a.view(getattr(self.torch, dtype))

    def contiguous(self, a):
        return a.contiguous()

    def astype(self, a, dtype: str):
        return a.to(getattr(self.torch, dtype))

    def launching(self, x):
        """Kernels launch on x's device and torch's current stream there (Triton's default)."""
        if self._current is None or x.device.type != "cuda" or x.device.index == self._current():
            return _NO_GUARD
        return self.torch.cuda.device(x.device)

    # -- host transfers ----------------------------------------------------------------
    def from_host(self, a: np.ndarray, like):
        return self.torch.from_numpy(_c_contiguous_host(a)).to(like.device)

    def to_host(self, a) -> np.ndarray:
        """One copy to the host (pinned and then one wait for device arrays)."""
        if a.device.type != "cuda":
            return a.detach().resolve_neg().numpy()
        host = self.torch.empty(a.shape, dtype=a.dtype, pin_memory=True)
        host.copy_(a)
        return host.numpy()

    # -- element-wise and reductions of the calibrations ----------------------------
    def amin(self, a, axis=None):
        return a.amin() if axis is None else a.amin(dim=axis)

    def amax(self, a, axis=None):
        return a.amax() if axis is None else a.amax(dim=axis)

    def floor(self, a):
        return a.floor()

    def bincount(self, idx, length: int):
        return self.torch.bincount(idx, minlength=length)

    def isfinite(self, a):
        return self.torch.isfinite(a)

    def where(self, cond, a, b):
        return self.torch.where(cond, a, b)

    # -- calibration helpers (gpuquant.calibration.searches, backends/triton/calibration.py) ---
    def concat(self, parts, axis: int = 0):
        return self.torch.cat(parts, dim=axis)

    def take_along(self, a, index):
        """take_along_axis on the last axis; index's other axes broadcast against a's."""
        return self.torch.take_along_dim(a, index, dim=-1)

    def zeros(self, shape, dtype: str, like):
        return self.torch.zeros(tuple(shape), dtype=getattr(self.torch, dtype), device=like.device)

    def arange(self, start: int, stop: int, dtype: str, like):
        return self.torch.arange(start, stop, dtype=getattr(self.torch, dtype), device=like.device)


class _CupyArg:
    """What Triton needs of a pointer argument: data_ptr() and a dtype it can name."""

    __slots__ = ("array", "dtype")

    def __init__(self, array):
        self.array = array
        self.dtype = array.dtype

    def data_ptr(self) -> int:
        return int(self.array.data.ptr)


class _CupyLaunch:
    """Launch on x's device and on CuPy's current stream there.

    The device switch is per block; the stream goes on this thread's stack of
    gpuquant.backends.triton.launch.stream_stack, which Triton's (once wrapped)
    get_current_stream answers from: blocks nest, and threads do not see each other's.
    """

    def __init__(self, cupy, stream_stack, x):
        self.cupy, self.stream_stack, self.x = cupy, stream_stack, x

    def __enter__(self):
        active, self.stack = self.stream_stack()
        device_id = self.x.device.id
        self.device = self.cupy.cuda.Device(device_id)
        self.device.__enter__()
        try:
            active.set_current_device(device_id)
            self.stack.append(self.cupy.cuda.get_current_stream().ptr)  # the device's
        except BaseException:
            self.device.__exit__(*sys.exc_info())
            raise

    def __exit__(self, *exc):
        self.stack.pop()
        self.device.__exit__(*exc)


class CupyOps:
    """CuPy arrays, on their device and CuPy's current stream, with or without torch."""

    name = "cupy"

    def __init__(self):
        import cupy

        from .triton.launch import stream_stack, wrap_arrays_of

        self.cupy, self._stream_stack = cupy, stream_stack
        wrap_arrays_of(cupy.ndarray, _CupyArg)

    # -- allocation, views, launches -------------------------------------------------
    def empty(self, shape, dtype: str, like):
        with self.cupy.cuda.Device(like.device.id):
            return self.cupy.empty(tuple(shape), dtype=np.dtype(dtype))

    def as_2d(self, x, rows: int, cols: int):
        x2 = x.reshape(rows, cols)
        ok = cols == 1 or x2.strides[1] == x2.itemsize
        return x2 if ok else self.cupy.ascontiguousarray(x2)

    def row_stride(self, x2) -> int:
        return int(x2.strides[0] // x2.itemsize)

    def is_contiguous(self, a) -> bool:
        return bool(a.flags.c_contiguous)

    def view_as(self, a, dtype: str):
        return a.view(np.dtype(dtype))

    def contiguous(self, a):
        return self.cupy.ascontiguousarray(a)

    def astype(self, a, dtype: str):
        return a.astype(np.dtype(dtype))

    def launching(self, x):
        return _CupyLaunch(self.cupy, self._stream_stack, x)

    # -- host transfers ----------------------------------------------------------------
    def from_host(self, a: np.ndarray, like):
        with self.cupy.cuda.Device(like.device.id):
            return self.cupy.asarray(a)

    def to_host(self, a) -> np.ndarray:
        """One copy to pinned host memory and one wait."""
        import cupyx

        host = cupyx.empty_pinned(a.shape, dtype=a.dtype)
        stream = self.cupy.cuda.get_current_stream()
        self.cupy.ascontiguousarray(a).get(stream=stream, out=host)
        stream.synchronize()
        return host

    # -- element-wise and reductions of the calibrations ----------------------------
    def amin(self, a, axis=None):
        return a.min(axis=axis)

    def amax(self, a, axis=None):
        return a.max(axis=axis)

    def floor(self, a):
        return self.cupy.floor(a)

    def bincount(self, idx, length: int):
        return self.cupy.bincount(idx, minlength=length)

    def isfinite(self, a):
        return self.cupy.isfinite(a)

    def where(self, cond, a, b):
        return self.cupy.where(cond, a, b)

    # -- calibration helpers (gpuquant.calibration.searches, backends/triton/calibration.py) ---
    def concat(self, parts, axis: int = 0):
        return self.cupy.concatenate(parts, axis=axis)

    def take_along(self, a, index):
        return self.cupy.take_along_axis(a, index, axis=-1)

    def zeros(self, shape, dtype: str, like):
        with self.cupy.cuda.Device(like.device.id):
            return self.cupy.zeros(tuple(shape), dtype=np.dtype(dtype))

    def arange(self, start: int, stop: int, dtype: str, like):
        with self.cupy.cuda.Device(like.device.id):
            return self.cupy.arange(start, stop, dtype=np.dtype(dtype))


class NumpyOps:
    """NumPy arrays (the reference backend): the subset the shared searches use."""

    name = "numpy"

    def empty(self, shape, dtype: str, like=None):
        return np.empty(tuple(shape), dtype=dtype)

    def from_host(self, a: np.ndarray, like=None):
        return a

    def astype(self, a, dtype: str):
        return np.asarray(a).astype(dtype)

    def view_as(self, a, dtype: str):
        return a.view(np.dtype(dtype))

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)

    def amin(self, a, axis=None):
        return a.min(axis=axis)

    floor, isfinite, where = (staticmethod(np.floor), staticmethod(np.isfinite),
                              staticmethod(np.where))

    def bincount(self, idx, length: int):
        return np.bincount(idx, minlength=length)

    # -- calibration helpers (gpuquant.calibration.searches) -----------------------------
    def concat(self, parts, axis: int = 0):
        return np.concatenate(parts, axis=axis)

    def take_along(self, a, index):
        return np.take_along_axis(a, index, axis=-1)

    def arange(self, start: int, stop: int, dtype: str, like=None):
        return np.arange(start, stop, dtype=dtype)


_adapters: dict[str, Any] = {}


def ops_for(x: Any):
    """The adapter of an array's framework (one instance each)."""
    framework = framework_of(x)
    ops = _adapters.get(framework)
    if ops is None:
        ops = {"cupy": CupyOps, "torch": TorchOps}.get(framework, NumpyOps)()
        _adapters[framework] = ops
    return ops
