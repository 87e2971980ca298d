"""NumPy backend: the reference every other backend is checked against, and the CPU fallback.

Every primitive takes the 2-D view ``x2`` of the input (see
:mod:`gpuquant.layout`) as a NumPy array of float16, float32 or float64 and
works block by block (:mod:`gpuquant.chunks`): each block is converted to
float32 once and quantized while it is in cache, on every core.

Arithmetic (DESIGN.md section 2): q = clamp(rint(x * inv_scale) + zp, qmin,
qmax) with inv_scale = 1 / scale, each step one float32 rounding; NaN maps
to the zero point. Dequantize: float32(q - zp) * scale.
"""

from __future__ import annotations

import numpy as np

from ..arrays import TensorInfo, from_numpy, to_numpy
from ..chunks import run_blocks
from ..config import QuantConfig
from ..errors import NonFiniteError
from ..layout import Layout
from ..packing import pack_rows, unpack_rows
from ..qparams import compute_qparams

__all__ = ["NumpyBackend"]

F32 = np.float32


class _NotFusable(Exception):
    """A block met non-finite data: leave the fused path for the checked one."""


# ------------------------------------------------------------------ helpers
def _align(layout: Layout) -> int:
    """Column blocks start on group boundaries and on even columns (int4 bytes)."""
    return 2 * layout.group_size if layout.mode == "group" else 2


def _group_views(buf: np.ndarray, size: int):
    """(full groups as (rows, n, size), n, the ragged tail or None) of a block."""
    rows, cols = buf.shape
    full = cols // size
    head = buf[:, : full * size].reshape(rows, full, size) if full else None
    tail = buf[:, full * size:] if cols % size else None
    return head, full, tail


def _apply(ufunc, buf: np.ndarray, params, layout: Layout) -> None:
    """``buf = ufunc(buf, params)`` in place, params broadcast per unit of the block."""
    if layout.mode != "group":
        ufunc(buf, params, out=buf)
        return
    head, full, tail = _group_views(buf, layout.group_size)
    if head is not None:
        ufunc(head, params[:, :full, None], out=head)
    if tail is not None:
        ufunc(tail, params[:, full: full + 1], out=tail)


def _reduce_block(xb: np.ndarray, layout: Layout, reduce) -> np.ndarray:
    """Per-unit reduction of one block: scalar, per column, per row or per group."""
    mode = layout.mode
    if mode == "scalar":
        return reduce(xb, axis=None)
    if mode == "col":
        return reduce(xb, axis=0)
    if mode == "row":
        return reduce(xb, axis=1)
    head, full, tail = _group_views(xb, layout.group_size)
    parts = []
    if head is not None:
        parts.append(reduce(head, axis=2))
    if tail is not None:
        parts.append(reduce(tail, axis=1)[:, None])
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


def _unit_index(layout: Layout, span) -> tuple:
    """Index of a block's units in the 2-D params array (see Layout.params_2d_shape)."""
    r0, r1, c0, c1 = span
    if layout.mode == "scalar":
        return ()
    if layout.mode == "col":
        return np.s_[c0:c1]
    if layout.mode == "row":
        return np.s_[r0:r1]
    size = layout.group_size
    return np.s_[r0:r1, c0 // size: -(-c1 // size)]


def _broadcastable(layout: Layout, block_params):
    """Per-unit values of a block shaped to broadcast against the block (see _apply)."""
    return block_params[:, None] if layout.mode == "row" else block_params


class _Params:
    """Per-unit arrays in 2-D params form, sliced and shaped for each block."""

    def __init__(self, layout: Layout, values: np.ndarray):
        self.layout = layout
        values = np.asarray(values)
        if layout.mode == "row":
            values = layout.rows_from_units(values.reshape(-1), np)
        self.values = values.reshape(layout.rows, layout.num_groups) if layout.mode == "group" \
            else values

    def block(self, span):
        return _broadcastable(self.layout, self.values[_unit_index(self.layout, span)])


def nonfinite_error(x2: np.ndarray, shape: tuple[int, ...], name: str = "x") -> NonFiniteError:
    """Count the NaN/Inf values and locate the first, for the error message."""
    counts = run_blocks(lambda s: np.count_nonzero(~np.isfinite(x2[s[0]:s[1], s[2]:s[3]])),
                        *x2.shape)
    total = int(sum(counts))
    flat = np.flatnonzero(~np.isfinite(x2.reshape(-1)))[0] if total else 0
    where = tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()
    value = x2.reshape(-1)[flat]
    return NonFiniteError(
        f"{name} has {total} non-finite value(s) (NaN or Inf) in its calibration data; the "
        f"first is {value} at index {where}. Clean the data, or pass ignore_nonfinite=True "
        "to calibrate over the finite values only"
    )


# ------------------------------------------------------------------ backend
class NumpyBackend:
    """The reference primitives on NumPy arrays (see the module docstring)."""

    name = "numpy"

    # -- arrays --------------------------------------------------------------
    def native(self, x, info: TensorInfo) -> np.ndarray:
        """The caller's CPU array as NumPy (zero-copy where DLPack allows)."""
        return to_numpy(x, info)

    def wrap(self, arr: np.ndarray, info: TensorInfo, dtype: str | None = None):
        """A NumPy result in the caller's framework."""
        return from_numpy(arr, info, dtype)

    # -- calibration ---------------------------------------------------------
    def minmax(self, x2: np.ndarray, layout: Layout, ignore_nonfinite: bool = False):
        """float32 (lo, hi) per unit, shaped ``layout.unit_shape``."""
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
            if masked:
                finite = np.isfinite(xb)
                return (span, _reduce_block(np.where(finite, xb, np.inf), layout, np.min),
                        _reduce_block(np.where(finite, xb, -np.inf), layout, np.max))
            return span, _reduce_block(xb, layout, np.min), _reduce_block(xb, layout, np.max)

        parts = run_blocks(one, layout.rows, layout.cols, _align(layout))
        return self._combine(parts, layout)

    @staticmethod
    def _combine(parts, layout: Layout):
        """Merge per-block partial results (in the calling thread: no races)."""
        mode = layout.mode
        if mode == "scalar":
            lo = np.min([p[1] for p in parts])
            hi = np.max([p[2] for p in parts])
            return np.asarray(lo, F32), np.asarray(hi, F32)
        size = {"col": layout.cols, "row": layout.rows}.get(mode)
        shape = (size,) if size is not None else (layout.rows, layout.num_groups)
        lo = np.full(shape, np.inf, F32)
        hi = np.full(shape, -np.inf, F32)
        for span, blo, bhi in parts:
            idx = _unit_index(layout, span)
            np.minimum(lo[idx], blo, out=lo[idx])
            np.maximum(hi[idx], bhi, out=hi[idx])
        if mode == "row":
            lo = layout.units_from_rows(lo, np.min)
            hi = layout.units_from_rows(hi, np.max)
        return lo.reshape(layout.unit_shape), hi.reshape(layout.unit_shape)

    def qparams(self, lo, hi, config: QuantConfig):
        return compute_qparams(lo, hi, config.qmin, config.qmax, config.symmetric)

    def percentile(self, x2: np.ndarray, layout: Layout, lower: float, upper: float,
                   ignore_nonfinite: bool = False):
        from .order_stats import unit_percentiles  # selection-based, see there

        return unit_percentiles(x2, layout, lower, upper, ignore_nonfinite)

    # -- quantize ------------------------------------------------------------
    def _out(self, layout: Layout, config: QuantConfig) -> np.ndarray:
        cols = (layout.cols + 1) // 2 if config.bits == 4 else layout.cols
        return np.empty((layout.rows, cols), dtype=config.storage_dtype)

    def _encode(self, buf, inv, zp, span, layout, config, data, nan_possible) -> None:
        """float32 block -> codes written (packed for int4) into ``data``."""
        r0, r1, c0, c1 = span
        _apply(np.multiply, buf, inv, layout)
        np.rint(buf, out=buf)
        if nan_possible:
            nan = np.isnan(buf)
            if nan.any():
                buf[nan] = 0  # rint(NaN) + zp must give zp
        if zp is not None:
            _apply(np.add, buf, zp, layout)
        np.clip(buf, config.qmin, config.qmax, out=buf)
        if config.bits == 4:
            packed = data[r0:r1, c0 // 2: (c1 + 1) // 2]
            pack_rows(buf.astype(np.int8), config.nibble_order, out=packed)
        else:
            np.copyto(data[r0:r1, c0:c1], buf, casting="unsafe")

    def quantize(self, x2: np.ndarray, layout: Layout, config: QuantConfig, scale, zero_point,
                 nan_possible: bool = True) -> np.ndarray:
        """Codes (int4 packed) of the 2-D view for given per-unit qparams."""
        with np.errstate(all="ignore"):
            inv = _Params(layout, F32(1) / np.asarray(scale, F32))
        zp = _Params(layout, np.asarray(zero_point).astype(F32))
        use_zp = not config.symmetric or bool(np.any(zero_point))
        data = self._out(layout, config)

        def one(span):
            r0, r1, c0, c1 = span
            buf = x2[r0:r1, c0:c1].astype(F32)
            with np.errstate(all="ignore"):
                zpb = zp.block(span) if use_zp else None
                self._encode(buf, inv.block(span), zpb, span, layout, config, data, nan_possible)

        run_blocks(one, layout.rows, layout.cols, _align(layout))
        return data

    def calibrate_quantize(self, x2: np.ndarray, layout: Layout, config: QuantConfig):
        """Min/max calibration and quantization in one read of each block.

        Possible when every unit lies inside one block (groups, or rows that
        are units and fit a block). Returns (data, scale, zero_point), or None
        when the layout does not allow it or the data hold non-finite values;
        the caller then takes the two-pass path, which reports them.
        """
        from ..chunks import BLOCK_ELEMENTS

        fits = layout.mode == "group" or (layout.rows_are_units and layout.cols <= BLOCK_ELEMENTS)
        if not fits:
            return None
        data = self._out(layout, config)
        scale = np.empty(layout.params_2d_shape(), F32)
        zero_point = np.empty(layout.params_2d_shape(), np.int32)

        def one(span):
            buf = x2[span[0]:span[1], span[2]:span[3]].astype(F32)
            lo = _reduce_block(buf, layout, np.min)
            hi = _reduce_block(buf, layout, np.max)
            if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
                raise _NotFusable
            s, z = self.qparams(lo, hi, config)
            index = _unit_index(layout, span)
            scale[index], zero_point[index] = s, z
            with np.errstate(all="ignore"):
                inv = _broadcastable(layout, F32(1) / s)
                zpf = _broadcastable(layout, z.astype(F32)) if not config.symmetric else None
                self._encode(buf, inv, zpf, span, layout, config, data, nan_possible=False)

        try:
            run_blocks(one, layout.rows, layout.cols, _align(layout))
        except _NotFusable:
            return None
        return data, scale.reshape(layout.unit_shape), zero_point.reshape(layout.unit_shape)

    # -- dequantize ----------------------------------------------------------
    def dequantize(self, data2: np.ndarray, layout: Layout, config: QuantConfig, scale,
                   zero_point, out_dtype: str = "float32") -> np.ndarray:
        """float(q - zp) * scale for the 2-D view, rounded to ``out_dtype``."""
        sc = _Params(layout, np.asarray(scale, F32))
        zp = _Params(layout, np.asarray(zero_point).astype(F32))
        use_zp = not config.symmetric or bool(np.any(zero_point))
        out = np.empty((layout.rows, layout.cols), dtype=out_dtype)
        signed = config.symmetric

        def one(span):
            r0, r1, c0, c1 = span
            if config.bits == 4:
                codes = unpack_rows(data2[r0:r1, c0 // 2: (c1 + 1) // 2], c1 - c0, signed,
                                    config.nibble_order)
            else:
                codes = data2[r0:r1, c0:c1]
            buf = codes.astype(F32)
            if use_zp:
                _apply(np.subtract, buf, zp.block(span), layout)
            _apply(np.multiply, buf, sc.block(span), layout)
            np.copyto(out[r0:r1, c0:c1], buf, casting="unsafe")

        with np.errstate(all="ignore"):
            run_blocks(one, layout.rows, layout.cols, _align(layout))
        return out
