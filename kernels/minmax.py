"""Min/max reductions, with the non-finite count of the same pass.

Each reduction returns, per output slot, the min and max over the *finite*
values and the number of NaN/Inf values. With a zero count these are the
plain min and max; otherwise the host either reports the data
(NonFiniteError) or, with ``ignore_nonfinite``, uses the finite range as is.
One read of the input serves both.
"""

import triton
import triton.language as tl

from .common import is_finite


@triton.jit
def segment_minmax_kernel(
    x_ptr, lo_ptr, hi_ptr, bad_ptr,
    # units are segments of rows: unit u is row u // units_per_row, columns
    # [(u % units_per_row) * seg_len, + seg_len) clipped to row_len
    n_units, units_per_row, seg_len, row_len, stride_row,
    BLOCK_U: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Per-segment min/max: rows (per token or channel), groups, or chunks of a flat tensor.

    Reads each element once: n_units * seg_len loads; writes 3 values a unit.
    """
    u = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_ok = u < n_units
    row = u // units_per_row
    start = (u % units_per_row) * seg_len
    length = tl.minimum(seg_len, row_len - start)
    base = row * stride_row + start
    lo = tl.full((BLOCK_U,), float("inf"), tl.float32)
    hi = tl.full((BLOCK_U,), float("-inf"), tl.float32)
    bad = tl.zeros((BLOCK_U,), tl.int32)
    for l0 in range(0, seg_len, BLOCK_L):
        col = l0 + tl.arange(0, BLOCK_L)
        mask = unit_ok[:, None] & (col[None, :] < length[:, None])
        x = tl.load(x_ptr + base[:, None] + col[None, :], mask=mask, other=0.0).to(tl.float32)
        fin = is_finite(x)
        lo = tl.minimum(lo, tl.min(tl.where(mask & fin, x, float("inf")), axis=1))
        hi = tl.maximum(hi, tl.max(tl.where(mask & fin, x, float("-inf")), axis=1))
        bad += tl.sum((mask & ~fin).to(tl.int32), axis=1)
    tl.store(lo_ptr + u, lo, mask=unit_ok)
    tl.store(hi_ptr + u, hi, mask=unit_ok)
    tl.store(bad_ptr + u, bad, mask=unit_ok)


@triton.jit
def column_minmax_kernel(
    x_ptr, lo_ptr, hi_ptr, bad_ptr,
    n_rows, n_cols, stride_row, rows_per_split,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per-column partial min/max over a split of the rows: outputs (splits, n_cols).

    Program (c, s) reduces columns [c * BLOCK_C, +BLOCK_C) over rows
    [s * rows_per_split, +rows_per_split); the host reduces the splits.
    """
    col = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    col_ok = col < n_cols
    r_begin = split.to(tl.int64) * rows_per_split
    r_end = tl.minimum(r_begin + rows_per_split, n_rows)
    lo = tl.full((BLOCK_C,), float("inf"), tl.float32)
    hi = tl.full((BLOCK_C,), float("-inf"), tl.float32)
    bad = tl.zeros((BLOCK_C,), tl.int32)
    for r0 in range(r_begin, r_end, BLOCK_R):
        row = r0 + tl.arange(0, BLOCK_R)
        mask = (row < r_end)[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + row[:, None] * stride_row + col[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        fin = is_finite(x)
        lo = tl.minimum(lo, tl.min(tl.where(mask & fin, x, float("inf")), axis=0))
        hi = tl.maximum(hi, tl.max(tl.where(mask & fin, x, float("-inf")), axis=0))
        bad += tl.sum((mask & ~fin).to(tl.int32), axis=0)
    out = split.to(tl.int64) * n_cols + col
    tl.store(lo_ptr + out, lo, mask=col_ok)
    tl.store(hi_ptr + out, hi, mask=col_ok)
    tl.store(bad_ptr + out, bad, mask=col_ok)
