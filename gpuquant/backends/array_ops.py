"""NumPy, torch and CuPy behind one small interface.

The Triton launchers allocate outputs, do tiny per-unit reductions with the
array library's own ops, and launch kernels on the array's device and
current stream. The calibration searches (gpuquant.searches) and the unit
matrices of the order statistics are written once against this interface
and run on every framework. ``ops_for(x)`` gives the adapter of an array.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

__all__ = ["ops_for", "TorchOps", "CupyOps"]


class TorchOps:
    """torch tensors: CUDA ones on their device and current stream; CPU ones under
    TRITON_INTERPRET=1."""

    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch

    def dtype(self, name: str):
        return getattr(self.torch, name)

    def empty(self, shape, dtype: str, like):
        return self.torch.empty(tuple(shape), dtype=self.dtype(dtype), device=like.device)

    def as_2d(self, x, rows: int, cols: int):
        x2 = x.reshape(rows, cols)
        return x2 if cols == 1 or x2.stride(1) == 1 else x2.contiguous()

    def row_stride(self, x2) -> int:
        return int(x2.stride(0))

    def amin(self, a, axis=None):
        return a.amin() if axis is None else a.amin(dim=axis)

    def amax(self, a, axis=None):
        return a.amax() if axis is None else a.amax(dim=axis)

    def broadcast_to(self, a, shape):
        return a.broadcast_to(shape)

    def contiguous(self, a):
        return a.contiguous()

    def astype(self, a, dtype: str):
        return a.to(self.dtype(dtype))

    def kernel_arg(self, a):
        return a

    def moveaxis(self, a, source: int, destination: int):
        return self.torch.movedim(a, source, destination)

    # element-wise and scan helpers of the calibration searches
    def from_host(self, a: np.ndarray, like):
        a = np.asarray(a)
        a = a if a.flags.c_contiguous else a.copy()  # ascontiguousarray would make 0-d 1-d
        return self.torch.from_numpy(a).to(like.device)

    def abs(self, a):
        return a.abs()

    def floor(self, a):
        return a.floor()

    def log(self, a):
        return a.log()

    def cumsum(self, a):
        return a.cumsum(dim=-1)

    def bincount(self, idx, length: int):
        return self.torch.bincount(idx, minlength=length)

    def bits32(self, a):
        """float32 values reinterpreted as int32."""
        return a.view(self.torch.int32)

    def sort(self, a):
        return self.torch.sort(a, dim=-1).values

    def isfinite(self, a):
        return self.torch.isfinite(a)

    def where(self, cond, a, b):
        return self.torch.where(cond, a, b)

    def count(self, mask):
        """Number of True along the last axis, as int64."""
        return mask.sum(dim=-1)

    def take_last(self, a, index):
        """a[..., index[...]] along the last axis, index shaped a.shape[:-1]."""
        return self.torch.take_along_dim(a, index[..., None], dim=-1)[..., 0]

    def is_gpu(self, a) -> bool:
        return a.device.type == "cuda"

    def to_host(self, a) -> np.ndarray:
        return a.detach().cpu().numpy()

    def capturing(self) -> bool:
        return bool(self.torch.cuda.is_current_stream_capturing())

    @contextlib.contextmanager
    def launching(self, x):
        """Kernels launch on x's device and torch's current stream there (Triton's default)."""
        if x.device.type != "cuda":
            yield
            return
        with self.torch.cuda.device(x.device):
            yield

    def async_host_copy(self, a):
        """(pinned host copy, event) of a small device array, without waiting for it."""
        host = self.torch.empty(a.shape, dtype=a.dtype, pin_memory=True)
        host.copy_(a, non_blocking=True)
        event = self.torch.cuda.Event()
        event.record()
        return host, event

    @staticmethod
    def event_done(event) -> bool:
        return bool(event.query())

    # -- calibration helpers (gpuquant.searches, triton_calibration) -------------
    def concat(self, parts, axis: int = 0):
        return self.torch.cat(parts, dim=axis)

    def take_along(self, a, index):
        """take_along_axis on the last axis (index as many dims as a)."""
        return self.torch.take_along_dim(a, index, dim=-1)

    def zeros(self, shape, dtype: str, like):
        return self.torch.zeros(tuple(shape), dtype=self.dtype(dtype), device=like.device)

    def arange(self, start: int, stop: int, dtype: str, like):
        return self.torch.arange(start, stop, dtype=self.dtype(dtype), device=like.device)


class _CupyArg:
    """What Triton needs of a pointer argument: data_ptr() and a dtype it can name."""

    __slots__ = ("array", "dtype")

    def __init__(self, array):
        self.array = array
        self.dtype = array.dtype

    def data_ptr(self) -> int:
        return int(self.array.data.ptr)


class CupyOps(TorchOps):
    """CuPy arrays, on their device and CuPy's current stream, with or without torch."""

    name = "cupy"

    def __init__(self):  # noqa: D107 - no torch here
        import cupy

        self.cupy = cupy

    def dtype(self, name: str):
        return np.dtype(name)

    def empty(self, shape, dtype: str, like):
        with self.cupy.cuda.Device(like.device.id):
            return self.cupy.empty(tuple(shape), dtype=np.dtype(dtype))

    def as_2d(self, x, rows: int, cols: int):
        x2 = x.reshape(rows, cols)
        ok = cols == 1 or x2.strides[1] == x2.itemsize
        return x2 if ok else self.cupy.ascontiguousarray(x2)

    def row_stride(self, x2) -> int:
        return int(x2.strides[0] // x2.itemsize)

    def amin(self, a, axis=None):
        return a.min(axis=axis)

    def amax(self, a, axis=None):
        return a.max(axis=axis)

    def broadcast_to(self, a, shape):
        return self.cupy.broadcast_to(a, shape)

    def contiguous(self, a):
        return self.cupy.ascontiguousarray(a)

    def astype(self, a, dtype: str):
        return a.astype(np.dtype(dtype))

    def kernel_arg(self, a):
        return _CupyArg(a)

    def moveaxis(self, a, source: int, destination: int):
        return self.cupy.moveaxis(a, source, destination)

    def from_host(self, a: np.ndarray, like):
        with self.cupy.cuda.Device(like.device.id):
            return self.cupy.asarray(a)

    def abs(self, a):
        return abs(a)

    def floor(self, a):
        return self.cupy.floor(a)

    def log(self, a):
        return self.cupy.log(a)

    def cumsum(self, a):
        return self.cupy.cumsum(a, axis=-1)

    def bincount(self, idx, length: int):
        return self.cupy.bincount(idx, minlength=length)

    def bits32(self, a):
        return a.view(np.int32)

    def sort(self, a):
        return self.cupy.sort(a, axis=-1)

    def isfinite(self, a):
        return self.cupy.isfinite(a)

    def where(self, cond, a, b):
        return self.cupy.where(cond, a, b)

    def count(self, mask):
        return mask.sum(axis=-1)

    def take_last(self, a, index):
        return self.cupy.take_along_axis(a, index[..., None], axis=-1)[..., 0]

    def is_gpu(self, a) -> bool:
        return True

    def to_host(self, a) -> np.ndarray:
        return self.cupy.asnumpy(a)

    def capturing(self) -> bool:
        stream = self.cupy.cuda.get_current_stream()
        return bool(getattr(stream, "is_capturing", lambda: False)())

    @contextlib.contextmanager
    def launching(self, x):
        """Make Triton launch on x's device and on CuPy's current stream.

        Triton asks its driver for the current stream (torch's when torch is
        imported, else the device's default stream); for the launches inside
        this block it gets CuPy's instead.
        """
        from triton.runtime import driver

        active = driver.active
        stream = self.cupy.cuda.get_current_stream()
        saved = active.get_current_stream
        with self.cupy.cuda.Device(x.device.id):
            active.set_current_device(x.device.id)
            active.get_current_stream = lambda device=None: stream.ptr
            try:
                yield
            finally:
                active.get_current_stream = saved

    def async_host_copy(self, a):
        import cupyx

        host = cupyx.empty_pinned(a.shape, dtype=a.dtype)
        stream = self.cupy.cuda.get_current_stream()
        a.get(stream=stream, out=host)
        event = self.cupy.cuda.Event()
        event.record(stream)
        return host, event

    @staticmethod
    def event_done(event) -> bool:
        return bool(event.done)

    # -- calibration helpers (gpuquant.searches, triton_calibration) -------------
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

    def moveaxis(self, a, source: int, destination: int):
        return np.moveaxis(a, source, destination)

    def to_host(self, a) -> np.ndarray:
        return np.asarray(a)

    def amin(self, a, axis=None):
        return a.min(axis=axis)

    abs, floor, log, isfinite, where = (staticmethod(np.abs), staticmethod(np.floor),
                                        staticmethod(np.log), staticmethod(np.isfinite),
                                        staticmethod(np.where))

    def cumsum(self, a):
        return np.cumsum(a, axis=-1)

    def bincount(self, idx, length: int):
        return np.bincount(idx, minlength=length)

    def take_last(self, a, index):
        return np.take_along_axis(a, index[..., None], axis=-1)[..., 0]

    # -- calibration helpers (gpuquant.searches) -----------------------------
    def broadcast_to(self, a, shape):
        return np.broadcast_to(a, shape)

    def concat(self, parts, axis: int = 0):
        return np.concatenate(parts, axis=axis)

    def take_along(self, a, index):
        return np.take_along_axis(a, index, axis=-1)

    def arange(self, start: int, stop: int, dtype: str, like=None):
        return np.arange(start, stop, dtype=dtype)


def ops_for(x: Any):
    module = type(x).__module__.split(".")[0]
    if module == "cupy":
        return CupyOps()
    if module == "torch":
        return TorchOps()
    return NumpyOps()
