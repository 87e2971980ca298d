"""The two interfaces a backend author implements, the registry, and selection.

``Backend`` is what gpuquant.core.plan and the calibrations call: launch plans
for the hot operations, and primitives for the calibrations. ``ArrayOps``
is the array-library adapter (backends/array_ops.py) through which the
Triton launchers and the shared searches (gpuquant.calibration.searches) allocate,
view and compute on torch, CuPy or NumPy arrays. Every backend sees a
tensor as the 2-D view of gpuquant.core.layout.Layout and follows the numerical
contract of docs/ARCHITECTURE.md bit for bit; tests/test_structure.py
checks that both backends and all adapters conform.

``backend=None`` picks where the data lives: NumPy arrays and torch CPU
tensors use "numpy"; CuPy arrays and torch CUDA tensors use "triton". A
backend that cannot serve the input raises ``BackendUnavailableError``
naming what is missing; data is never moved between devices.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from ..core.frameworks import TensorInfo, array_device, dtype_name, framework_of
from ..errors import BackendUnavailableError

__all__ = ["select", "select_for", "BACKENDS", "Backend", "ArrayOps", "triton_floats"]

Array = Any  # an array of the backend's framework (NumPy, torch or CuPy)


@runtime_checkable
class Backend(Protocol):
    """A backend: what gpuquant.core.plan, the calibrations and export call, and nothing else.

    ``layout`` arguments are gpuquant.core.layout.Layout, ``config`` QuantConfig;
    ``x2`` is the (rows, cols) view of the input as ``native`` gives it; per-unit
    arrays are shaped ``layout.unit_shape``.

    The runners' contract, the same on every backend (no caller asks which backend
    it has): a runner is built once per input class and called for every input of
    that class; it takes the caller's arrays (NumPy, torch or CuPy, as the plan
    was built for), returns arrays of that framework and device, and with ``out=``
    checks the caller's buffers (shape, dtype, framework: InvalidShapeError /
    InvalidDtypeError naming ``out``), writes the results into them and returns them.
    """

    name: str

    def native(self, x: Array, info: TensorInfo) -> Array:
        """The caller's array as the primitives below compute on it (no copy where possible)."""

    def wrap(self, arr: Array, info: TensorInfo) -> Array:
        """A primitive's result (qparams, say) back in the caller's framework."""

    def plan_quantize(self, layout, config, x: Array) -> Callable[..., tuple[Array, Array, Array]]:
        """Runner ``(x, out=None) -> (codes, scale, zero_point)``: min/max ranges, qparams,
        codes (int4 packed); ``out`` is the (codes, scale, zero_point) buffers."""

    def plan_quantize_given(self, layout, config, x: Array) -> Callable[..., Array]:
        """Runner ``(x, scale, zero_point, out=None) -> codes`` with known qparams (float32
        scale, int32 zero point, of x's framework); ``out`` is the codes buffer."""

    def plan_dequantize(self, layout, config, data: Array, out_dtype: str) -> Callable[..., Array]:
        """Runner ``(codes, scale, zero_point, out=None) -> y`` in ``out_dtype``."""

    def minmax(self, x2: Array, layout, ignore_nonfinite: bool = False,
               defer: bool = False) -> tuple[Array, Array]:
        """float32 (lo, hi) per unit over the finite values; NaN/Inf raise NonFiniteError
        unless ignored (``defer``: a GPU backend may raise at the next call instead)."""

    def qparams(self, lo: Array, hi: Array, config) -> tuple[Array, Array]:
        """(scale float32, zero point int32) of per-unit ranges: gpuquant.core.qparams' formula."""

    def percentile(self, x2: Array, layout, lower: float, upper: float,
                   ignore_nonfinite: bool = False) -> tuple[Array, Array]:
        """Exact (lower, upper) percentiles per unit, float32 (the contract's interpolation)."""

    def abs_histogram(self, x2: Array, layout, amax: Array, bins: int,
                      signed: bool = False) -> Array:
        """int64 per-unit histograms of |x| over [0, amax] (signed: x over [-amax, amax])."""

    def mse_errors(self, x2: Array, layout, lo: Array, hi: Array, factors, config) -> Array:
        """float64 (units, candidates) squared errors of the ranges (lo, hi) * factor."""

    def quantize_pack32(self, x2: Array, scale: Array, zero_point: Array, config) -> Array:
        """int32 words (compressed-tensors "pack-quantized", gpuquant.core.pack_quantized) of a
        2-D weight quantized with given per-unit float32 scales and int32 zero points (NumPy,
        or on x2's device) under ``config`` (int4/int8, groups or channels on axis 0)."""

    def quantize_gguf(self, x: Array, scheme: str, bf16_bits: bool = False) -> Array:
        """GGUF "q8_0" / "q4_0" blocks (uint8, gpuquant.core.ggml_blocks) of x, whose last
        dimension is a multiple of 32; ``bf16_bits``: x holds bfloat16 bit patterns."""


@runtime_checkable
class ArrayOps(Protocol):
    """One array library (torch, CuPy) as the Triton launchers and the searches use it: only
    what the libraries spell differently (backends/array_ops.py)."""

    name: str

    # allocation, views and launches (the Triton launchers)
    def empty(self, shape, dtype: str, like: Array) -> Array: ...
    def zeros(self, shape, dtype: str, like: Array) -> Array: ...
    def as_2d(self, x: Array, rows: int, cols: int) -> Array: ...
    def row_stride(self, x2: Array) -> int: ...
    def is_contiguous(self, a: Array) -> bool: ...
    def view_as(self, a: Array, dtype: str) -> Array: ...
    def contiguous(self, a: Array) -> Array: ...
    def astype(self, a: Array, dtype: str) -> Array: ...
    def launching(self, x: Array) -> Any: ...
    def from_host(self, a, like: Array) -> Array: ...
    def to_host(self, a: Array): ...
    # element-wise and reductions (the calibrations and searches)
    def amin(self, a: Array, axis=None) -> Array: ...
    def amax(self, a: Array, axis=None) -> Array: ...
    def floor(self, a: Array) -> Array: ...
    def bincount(self, idx: Array, length: int) -> Array: ...
    def isfinite(self, a: Array) -> Array: ...
    def where(self, cond: Array, a, b) -> Array: ...
    def concat(self, parts, axis: int = 0) -> Array: ...
    def take_along(self, a: Array, index: Array) -> Array: ...
    def arange(self, start: int, stop: int, dtype: str, like: Array) -> Array: ...


BACKENDS = ("numpy", "triton")
_instances: dict[str, object] = {}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _make(name: str):
    if name not in _instances:
        if name == "numpy":
            from .numpy.backend import NumpyBackend

            _instances[name] = NumpyBackend()
        else:
            from .triton.backend import TritonBackend  # raises BackendUnavailableError if missing

            _instances[name] = TritonBackend()
    return _instances[name]


def select(info: TensorInfo, backend: str | None = None):
    """The backend object that serves an input described by ``info``."""
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
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


def select_for(x, backend: str | None = None):
    """The backend that serves array ``x`` where it lives (``select`` of its framework and device)."""
    shape = tuple(int(s) for s in x.shape)
    return select(TensorInfo(framework_of(x), dtype_name(x), shape, array_device(x)), backend)


def triton_floats():
    """The Triton runners of the float formats (``quantize_float``, ``dequantize_float``);
    ImportError where Triton or torch is missing."""
    from .triton import floats

    return floats
