"""NumPy backend: the reference every other backend is checked against, and the CPU fallback.

Every primitive takes the 2-D view ``x2`` of the input (see
:mod:`gpuquant.core.layout`) as a NumPy array of float16, float32 or float64 and
works block by block (:mod:`gpuquant.core.blocks`): each block is converted to
float32 once and quantized while it is in cache (L2 or L3), on every core.
Min/max calibration and quantization are two passes: on a CPU a second read
costs less than computing qparams block by block, whose many small NumPy
calls dominate once the data are in cache.

Arithmetic (docs/ARCHITECTURE.md, the numerical contract): q = clamp(rint(x * inv_scale) + zp, qmin,
qmax) with inv_scale = 1 / scale, each step one float32 rounding; NaN maps
to the zero point. Dequantize: float32(q - zp) * scale, saturated to the output
dtype's finite range (FINITE_MAX), so finite inputs dequantize to finite values.
"""

from __future__ import annotations

import numpy as np

from ...config import QuantConfig
from ...core.blocks import run_blocks
from ...core.frameworks import TensorInfo, from_numpy, prepare, to_numpy
from ...core.layout import Layout
from ...core.nonfinite import nonfinite_error
from ...core.out_buffers import copy_into
from ...core.packing import pack_rows, unpack_rows
from ...core.qparams import compute_qparams
from ...kernels.modes import COL, GROUP, ROW, SCALAR

__all__ = ["NumpyBackend"]

F32 = np.float32
# the largest finite value of each output dtype, as float32 (float64 outputs are float32 values)
FINITE_MAX = {"float16": F32(65504.0), "bfloat16": np.uint32(0x7F7F0000).view(F32),
              "float32": np.finfo(F32).max, "float64": np.finfo(F32).max}


# ------------------------------------------------------------------ helpers
def _align(layout: Layout) -> int:
    """Column blocks start on group boundaries and on even columns (int4 bytes)."""
    return 2 * layout.group_size if layout.mode == GROUP else 2


def _reduce_block(xb: np.ndarray, layout: Layout, reduce) -> np.ndarray:
    """Per-unit reduction of one block: scalar, per column, per row or per group.

    ``reduce`` is np.minimum or np.maximum. Groups reduce a (rows, groups,
    size) view plus the short last group: ``reduceat`` is faster on one core
    but holds the GIL, and the view's reduction runs on both cores.
    """
    mode = layout.mode
    if mode == SCALAR:
        return reduce.reduce(xb, axis=None)
    if mode == COL:
        return reduce.reduce(xb, axis=0)
    if mode == ROW:
        return reduce.reduce(xb, axis=1)
    size = layout.group_size
    full = xb.shape[1] // size
    parts = [reduce.reduce(xb[:, : full * size].reshape(xb.shape[0], full, size), axis=2)]
    if xb.shape[1] % size:
        parts.append(reduce.reduce(xb[:, full * size:], axis=1)[:, None])
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _unit_index(layout: Layout, span) -> tuple:
    """Index of a block's units in the 2-D params array (see Layout.params_2d_shape)."""
    r0, r1, c0, c1 = span
    if layout.mode == SCALAR:
        return ()
    if layout.mode == COL:
        return np.s_[c0:c1]
    if layout.mode == ROW:
        return np.s_[r0:r1]
    size = layout.group_size
    return np.s_[r0:r1, c0 // size: -(-c1 // size)]


class _Params:
    """Per-unit arrays in 2-D params form, applied to each block with the right broadcast.

    Row params broadcast as a column (rows_b, 1), column params as a row,
    per-group params over a (rows_b, groups, size) view of the block (plus the
    short last group). Every operation is one NumPy ufunc call, which releases
    the GIL, so blocks run in parallel on the thread pool.
    """

    def __init__(self, layout: Layout, values):
        self.layout = layout
        values = np.asarray(values)
        if layout.mode == ROW:
            values = layout.rows_from_units(values.reshape(-1), np)
        elif layout.mode == GROUP:
            values = values.reshape(layout.rows, layout.num_groups)
        self.values = values

    def apply(self, ufunc, a: np.ndarray, span, out: np.ndarray, dtype=None) -> np.ndarray:
        """``out = ufunc(a, params of this block)``; ``a`` and ``out`` are (rows_b, cols_b)."""
        layout = self.layout
        values = self.values[_unit_index(layout, span)]
        if layout.mode != GROUP:
            return ufunc(a, values[:, None] if layout.mode == ROW else values, out=out,
                         dtype=dtype)
        size, rows = layout.group_size, a.shape[0]
        full = a.shape[1] // size
        if full:
            ufunc(a[:, : full * size].reshape(rows, full, size), values[:, :full, None],
                  out=out[:, : full * size].reshape(rows, full, size), dtype=dtype)
        if a.shape[1] % size:
            ufunc(a[:, full * size:], values[:, full:], out=out[:, full * size:], dtype=dtype)
        return out


# ------------------------------------------------------------------ backend
class NumpyBackend:
    """The reference primitives on NumPy arrays (see the module docstring)."""

    name = "numpy"

    # -- arrays --------------------------------------------------------------
    def native(self, x, info: TensorInfo) -> np.ndarray:
        """The caller's CPU array as NumPy (zero-copy where DLPack allows)."""
        return to_numpy(x, info)

    def wrap(self, arr: np.ndarray, info: TensorInfo):
        """A NumPy result in the caller's framework."""
        return from_numpy(arr, info)

    # -- calibration ---------------------------------------------------------
    def minmax(self, x2: np.ndarray, layout: Layout, ignore_nonfinite: bool = False,
               defer: bool = False):
        """float32 (lo, hi) per unit, shaped ``layout.unit_shape``.

        Non-finite data raise here (``defer`` matters only to GPU backends).
        """
        lo, hi = self._minmax(x2, layout, masked=False)
        if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):
            return lo, hi
        if not ignore_nonfinite:
            raise nonfinite_error(x2, layout.shape)
        lo, hi = self._minmax(x2, layout, masked=True)
        empty = lo > hi  # a unit whose every value is non-finite
        return np.where(empty, F32(0), lo), np.where(empty, F32(0), hi)

    def _minmax(self, x2: np.ndarray, layout: Layout, masked: bool):
        def one(span):
            r0, r1, c0, c1 = span
            xb = x2[r0:r1, c0:c1]
            if xb.dtype != F32:  # float16: NumPy reduces it in software, widening is 3x faster;
                with np.errstate(over="ignore"):  # float64: rounded to float32 first (1e39 -> inf)
                    xb = xb.astype(F32)
            if masked:
                finite = np.isfinite(xb)
                return (span, _reduce_block(np.where(finite, xb, np.inf), layout, np.minimum),
                        _reduce_block(np.where(finite, xb, -np.inf), layout, np.maximum))
            return (span, _reduce_block(xb, layout, np.minimum),
                    _reduce_block(xb, layout, np.maximum))

        parts = run_blocks(one, layout.rows, layout.cols, _align(layout))
        return self._combine(parts, layout)

    @staticmethod
    def _combine(parts, layout: Layout):
        """Merge per-block partial results (in the calling thread: no races)."""
        mode = layout.mode
        if mode == SCALAR:
            lo = np.min([p[1] for p in parts])
            hi = np.max([p[2] for p in parts])
            return np.asarray(lo, F32), np.asarray(hi, F32)
        size = {COL: layout.cols, ROW: layout.rows}.get(mode)
        shape = (size,) if size is not None else (layout.rows, layout.num_groups)
        lo = np.full(shape, np.inf, F32)
        hi = np.full(shape, -np.inf, F32)
        for span, blo, bhi in parts:
            idx = _unit_index(layout, span)
            np.minimum(lo[idx], blo, out=lo[idx])
            np.maximum(hi[idx], bhi, out=hi[idx])
        if mode == ROW:
            lo = layout.units_from_rows(lo, np.min)
            hi = layout.units_from_rows(hi, np.max)
        return lo.reshape(layout.unit_shape), hi.reshape(layout.unit_shape)

    def qparams(self, lo, hi, config: QuantConfig):
        return compute_qparams(lo, hi, config.qmin, config.qmax, config.symmetric,
                               scale_rule=config.scale_rule)

    def percentile(self, x2: np.ndarray, layout: Layout, lower: float, upper: float,
                   ignore_nonfinite: bool = False):
        from .order_stats import unit_percentiles  # selection-based, see there

        return unit_percentiles(x2, layout, lower, upper, ignore_nonfinite)

    def abs_histogram(self, x2: np.ndarray, layout: Layout, amax, bins: int,
                      signed: bool = False):
        """int64 counts per unit of |x| over [0, amax] (or x over [-amax, amax])."""
        from ..array_ops import NumpyOps
        from .calibration import abs_histogram

        return abs_histogram(NumpyOps(), x2, layout, amax, bins, signed)

    def mse_errors(self, x2: np.ndarray, layout: Layout, lo, hi, factors: np.ndarray,
                   config: QuantConfig) -> np.ndarray:
        """float64 (units, candidates) squared errors of the ranges (lo, hi) * factor."""
        from .calibration import mse_errors

        return mse_errors(x2, layout, lo, hi, factors, config)

    # -- quantize ------------------------------------------------------------
    def quantize(self, x2: np.ndarray, layout: Layout, config: QuantConfig, scale,
                 zero_point) -> np.ndarray:
        """Codes (int4 packed) of the 2-D view for given per-unit qparams."""
        return self._quantize(x2, layout, config, scale, zero_point, nan_possible=True)

    def _quantize(self, x2: np.ndarray, layout: Layout, config: QuantConfig, scale, zero_point,
                  nan_possible: bool) -> np.ndarray:
        """quantize(); ``nan_possible=False`` (data checked finite) skips the NaN scan."""
        divide = config.scale_rule == "half_range"  # peers' x / scale, not x * (1 / scale)
        with np.errstate(all="ignore"):
            inv = _Params(layout, np.asarray(scale, F32) if divide else F32(1) / np.asarray(scale, F32))
        use_zp = not config.symmetric or bool(np.any(zero_point))
        zp = _Params(layout, np.asarray(zero_point).astype(F32))
        cols = (layout.cols + 1) // 2 if config.bits == 4 else layout.cols
        data = np.empty((layout.rows, cols), dtype=config.storage_dtype)
        qmin, qmax = config.qmin, config.qmax

        def one(span):
            r0, r1, c0, c1 = span
            buf = np.empty((r1 - r0, c1 - c0), F32)
            with np.errstate(all="ignore"):
                # the input is rounded to float32 first (dtype=), then one float32 multiply
                # (half_range: one float32 division)
                inv.apply(np.divide if divide else np.multiply, x2[r0:r1, c0:c1], span, out=buf,
                          dtype=F32)
                np.rint(buf, out=buf)
                if nan_possible:
                    nan = np.isnan(buf)
                    if nan.any():
                        buf[nan] = 0  # rint(NaN) + zp must give zp
                if use_zp:
                    zp.apply(np.add, buf, span, out=buf)
                np.clip(buf, qmin, qmax, out=buf)
            if config.bits == 4:
                packed = data[r0:r1, c0 // 2: (c1 + 1) // 2]
                pack_rows(buf.astype(np.int8), config.nibble_order, out=packed)
            else:
                np.copyto(data[r0:r1, c0:c1], buf, casting="unsafe")

        run_blocks(one, layout.rows, layout.cols, _align(layout))
        return data

    # -- dequantize ----------------------------------------------------------
    def dequantize(self, data2: np.ndarray, layout: Layout, config: QuantConfig, scale,
                   zero_point, out_dtype: str = "float32") -> np.ndarray:
        """float(q - zp) * scale for the 2-D view, clamped to ``out_dtype``'s finite range
        and rounded to it."""
        return self._dequantize(data2, layout, config, scale, zero_point, out_dtype, out_dtype)

    def _dequantize(self, data2, layout: Layout, config: QuantConfig, scale, zero_point,
                    out_dtype: str, saturate: str) -> np.ndarray:
        """:meth:`dequantize` clamped to the finite range of ``saturate`` ("bfloat16" for
        float32 values rounded to bfloat16 afterwards)."""
        sc = _Params(layout, np.asarray(scale, F32))
        zp = _Params(layout, np.asarray(zero_point).astype(F32))
        use_zp = not config.symmetric or bool(np.any(zero_point))
        limit = FINITE_MAX[saturate]
        with np.errstate(over="ignore"):  # |y| <= peak per unit: clip only where it can pass
            peak = np.maximum(abs(config.qmin - zp.values), abs(config.qmax - zp.values)) * sc.values
        clip = bool(np.any(peak > limit))
        out = np.empty((layout.rows, layout.cols), dtype=out_dtype)
        signed = config.symmetric

        def one(span):
            r0, r1, c0, c1 = span
            if config.bits == 4:
                codes = unpack_rows(data2[r0:r1, c0 // 2: (c1 + 1) // 2], c1 - c0, signed,
                                    config.nibble_order)
            else:
                codes = data2[r0:r1, c0:c1]
            dst = out[r0:r1, c0:c1]
            buf = dst if dst.dtype == F32 else np.empty(dst.shape, F32)
            if use_zp:  # q - zp is exact in float32: |q - zp| < 2^17
                codes = zp.apply(np.subtract, codes, span, out=buf, dtype=F32)
            sc.apply(np.multiply, codes, span, out=buf, dtype=F32)
            if clip:
                np.clip(buf, -limit, limit, out=buf)
            if buf is not dst:
                np.copyto(dst, buf, casting="unsafe")

        with np.errstate(all="ignore"):
            run_blocks(one, layout.rows, layout.cols, _align(layout))
        return out

    # -- export (gpuquant.export) ----------------------------------------------
    def quantize_pack32(self, x2, scale, zero_point, config: QuantConfig):
        """compressed-tensors pack-quantized int32 words of a 2-D weight with given qparams."""
        from .export import quantize_pack32

        return quantize_pack32(self, x2, scale, zero_point, config)

    def quantize_gguf(self, x, scheme: str, bf16_bits: bool = False):
        """GGUF Q8_0 / Q4_0 blocks (uint8) of x, whose last dimension is a multiple of 32."""
        from .export import quantize_gguf

        return quantize_gguf(x, scheme, bf16_bits)

    # -- launch plans (gpuquant.core.plan caches them; the runners' contract is the Backend's) --
    def plan_quantize(self, layout: Layout, config: QuantConfig, x):
        """A runner ``(x, out=None) -> (codes, scale, zero_point)`` with min/max ranges."""
        info, stored = _infos(x, layout, config)

        def run(x, out=None):
            x2 = to_numpy(x, info).reshape(layout.rows, layout.cols)
            lo, hi = self.minmax(x2, layout, config.ignore_nonfinite)
            scale, zero_point = self.qparams(lo, hi, config)
            scale, zero_point = scale.reshape(layout.unit_shape), zero_point.reshape(layout.unit_shape)
            codes = self._quantize(x2, layout, config, scale, zero_point,
                                   nan_possible=config.ignore_nonfinite)
            return _deliver((codes.reshape(layout.packed_shape(config.bits)), scale, zero_point),
                            stored, out)

        return run

    def plan_quantize_given(self, layout: Layout, config: QuantConfig, x):
        """A runner ``(x, scale, zero_point, out=None) -> codes`` with known qparams."""
        info, stored = _infos(x, layout, config)

        def run(x, scale, zero_point, out=None):
            codes = self.quantize(to_numpy(x, info).reshape(layout.rows, layout.cols), layout,
                                  config, _host(scale), _host(zero_point))
            codes = codes.reshape(layout.packed_shape(config.bits))
            return _deliver((codes,), stored, None if out is None else (out,))[0]

        return run

    def plan_dequantize(self, layout: Layout, config: QuantConfig, data, out_dtype: str):
        """A runner ``(codes, scale, zero_point, out=None) -> y`` for arrays on the CPU."""
        info = prepare(data, "data", require_float=False)[1]
        compute = "float32" if out_dtype == "bfloat16" else out_dtype  # NumPy has no bfloat16

        def run(data, scale, zero_point, out=None):
            native = [to_numpy(*prepare(a, name, require_float=False))
                      for a, name in ((data, "data"), (scale, "scale"), (zero_point, "zero_point"))]
            y = self._dequantize(native[0].reshape(layout.rows, -1), layout, config, native[1],
                                 native[2], compute, out_dtype)
            y = from_numpy(y.reshape(layout.shape), info, out_dtype)
            return y if out is None else copy_into((out,), (y,))[0]

        return run


def _infos(x, layout: Layout, config: QuantConfig) -> tuple[TensorInfo, TensorInfo]:
    """(the input's TensorInfo, that of the codes and qparams the runners give back)."""
    info = prepare(x)[1]
    return info, TensorInfo(info.framework, config.storage_dtype,
                            layout.packed_shape(config.bits), info.device)


def _host(a) -> np.ndarray:
    """qparams as NumPy, read as what they are (never as x's dtype: bfloat16 x, float32 scales)."""
    return a if isinstance(a, np.ndarray) else to_numpy(*prepare(a, "qparams", require_float=False))


def _deliver(results, stored: TensorInfo, out):
    """NumPy results in the caller's framework, or copied into its ``out`` buffers."""
    results = tuple(from_numpy(a, stored) for a in results)
    return results if out is None else copy_into(out, results)
