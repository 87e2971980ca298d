"""Launchers for the Triton kernels (kernels/), on torch CUDA tensors and CuPy arrays.

A launcher checks shapes, allocates outputs on the input's device, picks
block sizes and launches on the array's current stream. Tiny per-unit
reductions (splits of a column reduction, rows of one channel) use the
array library's own ops. Under TRITON_INTERPRET=1 the same launchers run
the kernels on torch CPU tensors: that is how CI tests them bit for bit.
"""

from __future__ import annotations

import math
import os

from ..arrays import TensorInfo
from ..config import QuantConfig
from ..errors import BackendUnavailableError
from ..layout import Layout
from ..nonfinite import NonFiniteCheck
from .array_ops import ops_for

try:
    import triton

    from gpuquant.kernels import dequantize as _dq
    from gpuquant.kernels import minmax as _mm
    from gpuquant.kernels import quantize as _q
except ImportError as exc:  # pragma: no cover - depends on the machine
    raise BackendUnavailableError(
        f"the Triton backend needs Triton (>= 3.6): pip install 'gpuquant[gpu]' ({exc})"
    ) from None

__all__ = ["TritonBackend", "device_converter", "FUSED_MAX_SEGMENT"]

FUSED_MAX_SEGMENT = 8192  # longest unit that one fused tile row holds
_TILE = 4096  # elements per program in the element-wise kernels
_MODES = {"scalar": 0, "col": 1, "row": 2, "group": 3}
_OPTIONS = {"enable_fp_fusion": False}  # keep x * inv and the rounding adds unfused


def _pow2(n: int, cap: int) -> int:
    return max(2, min(cap, triton.next_power_of_2(max(1, n))))


def _launch(kernel, grid, *args, num_warps: int = 4, **constexprs):
    if os.environ.get("TRITON_INTERPRET") == "1":
        kernel[grid](*args, **constexprs)
    else:
        kernel[grid](*args, num_warps=num_warps, **constexprs, **_OPTIONS)


def _tile_shape(rows: int, cols: int) -> tuple[int, int]:
    block_c = _pow2(cols, 1024)
    return _pow2(rows, max(1, _TILE // block_c)) if rows > 1 else 1, block_c


class TritonBackend:
    """The primitives of the reference backend, as Triton kernels."""

    name = "triton"

    # -- arrays --------------------------------------------------------------
    def native(self, x, info: TensorInfo):
        return x

    def wrap(self, arr, info: TensorInfo, dtype: str | None = None):
        return arr

    def _view(self, x2, layout: Layout):
        ops = ops_for(x2)
        return ops, ops.as_2d(x2, layout.rows, layout.cols)

    # -- calibration ---------------------------------------------------------
    def _segments(self, layout: Layout) -> tuple[int, int, int]:
        """(units, units per row, segment length) of the segment kernels."""
        if layout.mode == "group":
            per_row = layout.num_groups
            return layout.rows * per_row, per_row, layout.group_size
        if layout.mode == "row":
            return layout.rows, 1, layout.cols
        chunk = min(layout.cols, 1 << 16)  # scalar: chunks of rows, reduced again below
        per_row = -(-layout.cols // chunk)
        return layout.rows * per_row, per_row, chunk

    def _reduce(self, ops, x2, layout: Layout):
        """Per-unit finite (lo, hi) and non-finite counts, one read of the data."""
        stride = ops.row_stride(x2)
        arg = ops.kernel_arg
        if layout.mode == "col":
            block_c = _pow2(layout.cols, 128)
            splits = max(1, min(256, layout.rows // 64))  # grid axis 1: at most 65535
            per_split = -(-layout.rows // splits)
            lo, hi = (ops.empty((splits, layout.cols), "float32", x2) for _ in range(2))
            bad = ops.empty((splits, layout.cols), "int32", x2)
            grid = (triton.cdiv(layout.cols, block_c), splits)
            _launch(_mm.column_minmax_kernel, grid, arg(x2), arg(lo), arg(hi), arg(bad),
                    layout.rows, layout.cols, stride, per_split, BLOCK_R=32, BLOCK_C=block_c)
            return ops.amin(lo, 0), ops.amax(hi, 0), bad.sum(0)
        units, per_row, seg = self._segments(layout)
        block_l = _pow2(seg, 2048)
        block_u = max(1, min(64, _TILE // block_l))
        lo, hi = (ops.empty((units,), "float32", x2) for _ in range(2))
        bad = ops.empty((units,), "int32", x2)
        _launch(_mm.segment_minmax_kernel, (triton.cdiv(units, block_u),), arg(x2), arg(lo),
                arg(hi), arg(bad), units, per_row, seg, layout.cols, stride,
                BLOCK_U=block_u, BLOCK_L=block_l)
        if layout.mode == "scalar":
            return ops.amin(lo), ops.amax(hi), bad.sum()
        if layout.mode == "row" and not layout.rows_are_units:
            lo = layout.units_from_rows(lo, ops.amin)
            hi = layout.units_from_rows(hi, ops.amax)
            bad = layout.units_from_rows(bad, lambda a, axis: a.sum(axis))
        return lo.reshape(layout.unit_shape), hi.reshape(layout.unit_shape), bad

    def minmax(self, x2, layout: Layout, ignore_nonfinite: bool = False, defer: bool = False):
        """Finite float32 (lo, hi) per unit; NaN/Inf raise unless ignored (see nonfinite.py)."""
        ops, x2 = self._view(x2, layout)
        with ops.launching(x2):
            lo, hi, bad = self._reduce(ops, x2, layout)
        if not ignore_nonfinite:
            NonFiniteCheck(bad, layout.shape, ops, defer)
        return lo, hi

    def qparams(self, lo, hi, config: QuantConfig):
        scale, zero_point, _ = self._qparams(lo, hi, config)
        return scale, zero_point

    def _qparams(self, lo, hi, config: QuantConfig):
        ops = ops_for(lo)
        lo, hi = ops.contiguous(lo), ops.contiguous(hi)
        scale, inv = (ops.empty(lo.shape, "float32", lo) for _ in range(2))
        zero_point = ops.empty(lo.shape, "int32", lo)
        n = math.prod(lo.shape)
        arg = ops.kernel_arg
        with ops.launching(lo):
            _launch(_q.qparams_kernel, (triton.cdiv(n, 1024),), arg(lo), arg(hi), arg(scale),
                    arg(zero_point), arg(inv), n, QMIN=config.qmin, QMAX=config.qmax,
                    SYMMETRIC=config.symmetric, BLOCK=1024)
        return scale, zero_point, inv

    # -- quantize ------------------------------------------------------------
    def _params_2d(self, ops, values, layout: Layout):
        """Per-unit values as the tile kernels index them (expanded per row in row mode)."""
        if layout.mode == "row":
            return ops.contiguous(layout.rows_from_units(values.reshape(-1), ops))
        return ops.contiguous(values)

    def _codes_out(self, ops, x2, layout: Layout, config: QuantConfig):
        cols = (layout.cols + 1) // 2 if config.bits == 4 else layout.cols
        return ops.empty((layout.rows, cols), config.storage_dtype, x2)

    def quantize(self, x2, layout: Layout, config: QuantConfig, scale, zero_point,
                 nan_possible: bool = True, inv=None):
        """Codes (int4 packed) of the 2-D view for given per-unit qparams."""
        ops, x2 = self._view(x2, layout)
        arg = ops.kernel_arg
        with ops.launching(x2):
            if inv is None:
                scale = ops.contiguous(ops.astype(scale, "float32"))
                inv = ops.empty(scale.shape, "float32", scale)
                n = math.prod(scale.shape)
                _launch(_q.reciprocal_kernel, (triton.cdiv(n, 1024),), arg(scale), arg(inv), n,
                        BLOCK=1024)
            inv = self._params_2d(ops, inv, layout)
            zp = self._params_2d(ops, ops.astype(zero_point, "int32"), layout)
            data = self._codes_out(ops, x2, layout, config)
            block_r, block_c = _tile_shape(layout.rows, layout.cols)
            col_tiles = triton.cdiv(layout.cols, block_c)
            grid = (triton.cdiv(layout.rows, block_r) * col_tiles,)
            _launch(_q.quantize_tile_kernel, grid, arg(x2), arg(data), arg(inv), arg(zp),
                    layout.rows, layout.cols, ops.row_stride(x2), ops.row_stride(data),
                    max(1, layout.num_groups), max(1, layout.group_size), col_tiles,
                    MODE=_MODES[layout.mode], QMIN=config.qmin, QMAX=config.qmax,
                    PACK=config.bits == 4, HIGH_FIRST=config.nibble_order == "high_first",
                    BLOCK_R=block_r, BLOCK_C=block_c, num_warps=8 if block_r * block_c >= 4096 else 4)
        return data

    def calibrate_quantize(self, x2, layout: Layout, config: QuantConfig, defer: bool = True):
        """Min/max calibration + quantize + pack in one read when each unit fits one tile;
        otherwise min/max, qparams and quantize as three launches. Never synchronises."""
        ops, x2 = self._view(x2, layout)
        fused = (layout.mode == "group" or layout.rows_are_units) and \
            (layout.group_size if layout.mode == "group" else layout.cols) <= FUSED_MAX_SEGMENT
        if config.bits == 4 and layout.mode == "group" and layout.group_size % 2:
            fused = False  # a byte would straddle two groups
        if not fused:
            with ops.launching(x2):
                lo, hi, bad = self._reduce(ops, x2, layout)
            scale, zero_point, inv = self._qparams(lo, hi, config)
            data = self.quantize(x2, layout, config, scale, zero_point, inv=inv)
        else:
            units, per_row, seg = self._segments(layout)
            block_l = _pow2(seg, FUSED_MAX_SEGMENT)
            block_u = max(1, min(64, _TILE // block_l))
            scale = ops.empty((units,), "float32", x2)
            zero_point, bad = (ops.empty((units,), "int32", x2) for _ in range(2))
            data = self._codes_out(ops, x2, layout, config)
            arg = ops.kernel_arg
            with ops.launching(x2):
                _launch(_q.fused_segment_kernel, (triton.cdiv(units, block_u),), arg(x2),
                        arg(data), arg(scale), arg(zero_point), arg(bad), units, per_row, seg,
                        layout.cols, ops.row_stride(x2), ops.row_stride(data),
                        QMIN=config.qmin, QMAX=config.qmax, SYMMETRIC=config.symmetric,
                        PACK=config.bits == 4, HIGH_FIRST=config.nibble_order == "high_first",
                        BLOCK_U=block_u, BLOCK_L=block_l,
                        num_warps=8 if block_u * block_l >= 4096 else 4)
        if not config.ignore_nonfinite:
            NonFiniteCheck(bad, layout.shape, ops, defer)
        return data, scale.reshape(layout.unit_shape), zero_point.reshape(layout.unit_shape)

    # -- dequantize ----------------------------------------------------------
    def dequantize(self, data2, layout: Layout, config: QuantConfig, scale, zero_point,
                   out_dtype: str = "float32"):
        ops = ops_for(data2)
        data2 = ops.contiguous(data2)
        y = ops.empty((layout.rows, layout.cols), out_dtype, data2)
        scale = self._params_2d(ops, ops.astype(scale, "float32"), layout)
        zp = self._params_2d(ops, ops.astype(zero_point, "int32"), layout)
        block_r, block_c = _tile_shape(layout.rows, layout.cols)
        col_tiles = triton.cdiv(layout.cols, block_c)
        grid = (triton.cdiv(layout.rows, block_r) * col_tiles,)
        arg = ops.kernel_arg
        with ops.launching(data2):
            _launch(_dq.dequantize_tile_kernel, grid, arg(data2), arg(y), arg(scale), arg(zp),
                    layout.rows, layout.cols, ops.row_stride(data2), layout.cols,
                    max(1, layout.num_groups), max(1, layout.group_size), col_tiles,
                    MODE=_MODES[layout.mode], PACKED=config.bits == 4, SIGNED=config.symmetric,
                    HIGH_FIRST=config.nibble_order == "high_first",
                    BLOCK_R=block_r, BLOCK_C=block_c, num_warps=8 if block_r * block_c >= 4096 else 4)
        return y

    def percentile(self, x2, layout: Layout, lower: float, upper: float,
                   ignore_nonfinite: bool = False):
        from .triton_calibration import unit_percentiles

        ops, x2 = self._view(x2, layout)
        return unit_percentiles(_launch, ops, x2, layout, lower, upper, ignore_nonfinite)

    def abs_histogram(self, x2, layout: Layout, amax, bins: int, signed: bool = False):
        from .triton_calibration import abs_histogram

        ops, x2 = self._view(x2, layout)
        return abs_histogram(_launch, ops, x2, layout, amax, bins, signed)

    def mse_errors(self, x2, layout: Layout, lo, hi, factors, config: QuantConfig):
        """float64 (units, candidates) squared errors of the shrunk ranges, one read of x."""
        from .triton_calibration import mse_errors

        ops, x2 = self._view(x2, layout)
        return mse_errors(self, _launch, ops, x2, layout, lo, hi, factors, config)


def device_converter():
    """A function moving NumPy arrays to the GPU (CuPy first, then torch), or None."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy.asarray
    except Exception:  # noqa: BLE001 - no CuPy or no device
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return lambda a: torch.from_numpy(a).cuda()
    except ImportError:
        pass
    return None
