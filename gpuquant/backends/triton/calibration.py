"""Launchers of the calibration kernels: exact percentiles, histograms, the MSE sweep.

Called by :class:`gpuquant.backends.triton.backend.TritonBackend`; every launch goes
through gpuquant.backends.triton.launch (so the launch recorder sees these too).

Percentiles (kernels/select.py), the contract's interpolation
(docs/ARCHITECTURE.md) bit for bit, with no sort of
the data and one host synchronisation (the non-finite check; none with
``ignore_nonfinite``):

- a whole tensor, any size: three reads (histograms of 11, 11 and 10 key
  bits, atomically added into one small zeroed buffer; each pass recomputes
  the earlier choices from the histograms) and a one-program kernel that
  interpolates: 4 launches and one memset;
- units of at most ``SORT_MAX`` values: one launch, each unit loaded once and
  its keys sorted in registers (``tl.sort``);
- larger units: one launch, one program per unit doing the three histogram
  passes over its unit.

Histograms (kernels/histogram.py, entropy and the streamed Calibrator): one
launch and one read into zeroed per-unit int64 counts. The MSE sweep
(kernels/mse.py): one launch and one read for every candidate at once.

All unit kernels address unit u as ``seg`` values at (u // per_row) * stride
+ (u % per_row) * seg (groups, rows), in the input's dtype. Channels that are
not rows of the 2-D view (the last axis, or an axis before it that rows
share) are first copied to a (channels, values) matrix.
"""

from __future__ import annotations

import struct

import numpy as np
import triton

from gpuquant.kernels import histogram as _hist
from gpuquant.kernels import mse as _mse
from gpuquant.kernels import select as _sel
from gpuquant.kernels.modes import COL, GROUP, SCALAR

from ...config import QuantConfig
from ...core.layout import Layout
from ...core.nonfinite import raise_counts
from .launch import launch
from .runners import pow2 as _pow2

__all__ = ["unit_percentiles", "abs_histogram", "mse_errors", "SORT_MAX", "HIST_MAX_BINS"]

SORT_MAX = 4096  # longest unit selected by one in-register sort
_BINS = 2048
_BLOCK = 4096  # values per histogram step
_MAX_PROGRAMS = 1024  # programs of a whole-tensor histogram pass
HIST_MAX_BINS = 8192  # more bins than this: the array-library histogram


def _halves(p: float) -> tuple[int, int]:
    """The float64 bits of p as two signed 32-bit ints (high, low)."""
    bits = struct.unpack("<q", struct.pack("<d", float(p)))[0]
    low = bits & 0xFFFFFFFF
    return bits >> 32, low - (1 << 32) if low >= 1 << 31 else low


def _tensor_percentiles(ops, x2, lower, upper, ignore):
    """(lo, hi, non-finite count) of all of x2 as device arrays; 3 reads, 4 launches."""
    flat = ops.contiguous(x2).reshape(-1)
    n = flat.shape[0]
    hist = ops.zeros((9 * _BINS,), "int64", flat)  # histograms of 1 + 4 + 4 ranks
    out = ops.empty((2,), "float32", flat)
    bad = ops.empty((1,), "int64", flat)
    blocks = max(1, triton.cdiv(n, _BLOCK))
    progs = min(blocks, _MAX_PROGRAMS)
    halves = (*_halves(lower), *_halves(upper))
    with ops.launching(flat):
        for step in range(3):
            launch(_sel.key_histogram_kernel, (progs,), flat, n, hist,
                   triton.cdiv(blocks, progs), *halves, PASS=step, IGNORE=ignore,
                   BLOCK=_BLOCK, num_warps=8)
        launch(_sel.tensor_select_kernel, (1,), hist, out, bad, *halves,
               IGNORE=ignore)
    return out[0], out[1], bad


def _unit_view(ops, x2, layout: Layout):
    """(matrix, units, units per row, segment, columns, row stride) of the unit kernels."""
    if layout.mode == GROUP:
        return (x2, layout.rows * layout.num_groups, layout.num_groups, layout.group_size,
                layout.cols, ops.row_stride(x2))
    if layout.mode == SCALAR:
        m = ops.contiguous(x2).reshape(1, -1)
    elif layout.mode == COL:
        m = ops.contiguous(x2.T)
    elif layout.rows_are_units:
        m = x2
    else:
        m = ops.contiguous(layout.channel_rows(x2))
    return m, m.shape[0], 1, m.shape[1], m.shape[1], ops.row_stride(m)


def unit_percentiles(ops, x2, layout: Layout, lower: float, upper: float,
                     ignore_nonfinite: bool = False):
    """float32 (P_lower, P_upper) per unit, shaped ``layout.unit_shape``."""
    if layout.mode == SCALAR:
        lo, hi, bad = _tensor_percentiles(ops, x2, lower, upper, ignore_nonfinite)
    else:
        m, units, per_row, seg, cols, stride = _unit_view(ops, x2, layout)
        lo, hi = (ops.empty((units,), "float32", m) for _ in range(2))
        bad = ops.empty((units,), "int32", m)
        args = (m, lo, hi, bad)
        halves = (*_halves(lower), *_halves(upper))
        with ops.launching(m):
            if seg <= SORT_MAX:
                block_l = _pow2(seg, SORT_MAX)
                block_u = max(1, min(64, SORT_MAX // block_l))
                launch(_sel.unit_sort_select_kernel, (triton.cdiv(units, block_u),), *args,
                       units, per_row, seg, cols, stride, *halves, IGNORE=ignore_nonfinite,
                       BLOCK_U=block_u, BLOCK_L=block_l, num_warps=8)
            else:
                launch(_sel.unit_radix_select_kernel, (units,), *args, per_row, seg, cols,
                       stride, *halves, IGNORE=ignore_nonfinite, BLOCK=_BLOCK, num_warps=8)
    if not ignore_nonfinite:  # on a GPU: one pinned asynchronous copy, then one wait
        raise_counts(bad, layout.shape, ops)
    return lo.reshape(layout.unit_shape), hi.reshape(layout.unit_shape)


def abs_histogram(ops, x2, layout: Layout, amax, bins: int, signed: bool = False):
    """int64 counts per unit, shaped params_2d_shape + (bins,), in one read of x2 (one
    launch and one memset); see kernels/histogram.py for the bin rule."""
    if bins > HIST_MAX_BINS:
        from ..numpy.calibration import abs_histogram as by_array_ops

        return by_array_ops(ops, x2, layout, amax, bins, signed)
    m, units, per_row, seg, cols, stride = _unit_view(ops, x2, layout)
    counts = ops.zeros((units, bins), "int64", m)
    amax = ops.contiguous(ops.astype(amax, "float32").reshape(-1))
    blocks = max(1, triton.cdiv(seg, _BLOCK))
    slices = min(blocks, max(1, _MAX_PROGRAMS // units))
    with ops.launching(m):
        launch(_hist.unit_histogram_kernel, (units * slices,), m, amax, counts,
               per_row, seg, cols, stride, slices, triton.cdiv(blocks, slices), bins,
               SIGNED=signed, NB=max(64, _pow2(bins, HIST_MAX_BINS)), BLOCK=_BLOCK,
               num_warps=8)  # NB: at least 2 bins per lane of a warp
    return counts.reshape(*layout.params_2d_shape(), bins)


def mse_errors(be, ops, x2, layout: Layout, lo, hi, factors, config: QuantConfig):
    """float64 (units, candidates) squared errors of the shrunk ranges: one launch reading x
    once in its own dtype (after the channel copy of ``_unit_view`` where units are not
    rows), then a sum over each unit's chunks."""
    n_cand = len(factors)
    on_host = isinstance(factors, np.ndarray)  # gq.calibrate passes them on the device
    f = (ops.from_host(factors, lo) if on_host else factors).reshape(1, -1)
    scale, zp, inv = be._qparams(lo.reshape(-1, 1) * f, hi.reshape(-1, 1) * f, config)
    m, units, per_row, seg, cols, stride = _unit_view(ops, x2, layout)
    block_l = _pow2(seg, 1024)
    chunks = triton.cdiv(seg, block_l)
    block_u = max(1, min(32, 4096 // block_l))
    part = ops.empty((units * chunks, n_cand), "float64", m)
    with ops.launching(m):
        launch(_mse.mse_sweep_kernel, (triton.cdiv(units * chunks, block_u),), m,
               *(ops.contiguous(p.reshape(-1)) for p in (inv, scale, zp)), part,
               units, per_row, seg, cols, stride, chunks, n_cand, QMIN=config.qmin,
               QMAX=config.qmax, BLOCK_U=block_u, BLOCK_L=block_l,
               HALF_RANGE=config.scale_rule == "half_range")
    return part.reshape(units, chunks, n_cand).sum(1)
