"""Min/max reductions over the finite values, reporting NaN/Inf from the same pass.

Each reduction writes, per output slot, the min and max over the *finite*
values. With ``CHECK`` the non-finite values it met are noted in the
host-mapped flags (common.report_nonfinite) with the unit they belong to;
without it they are skipped (``ignore_nonfinite``). A slot with no finite
value gets lo = +inf > hi = -inf, which the qparams step reads as (0, 0).

The hot pass keeps NaN-propagating minima and maxima (two FMNMX an element; per column:
element-wise across the loop, no exchange between threads until the end): a slot whose range
comes out finite held finite values only. Otherwise (NaN, Inf, or a slot past the end) a
cold second pass over the program's data takes the range over the finite values and
counts the non-finite ones.
"""

import triton
import triton.language as tl

from .common import any_nonfinite, is_finite, max_nan, min_nan, raw_range, report_nonfinite


@triton.jit
def _tile_update(lo, hi, x, mask, EVEN: tl.constexpr):
    """Element-wise NaN-propagating running min and max of tiles (masked lanes left out)."""
    if EVEN:
        return min_nan(lo, x), max_nan(hi, x)
    return min_nan(lo, tl.where(mask, x, float("inf"))), max_nan(hi, tl.where(mask, x, float("-inf")))


@triton.jit
def segment_minmax_kernel(
    x_ptr, lo_ptr, hi_ptr, flags_ptr,
    # segment u is row u // units_per_row, columns [(u % units_per_row) * seg_len, + seg_len)
    # clipped to row_len; it belongs to unit (u // unit_div) % unit_mod of the qparams
    n_units, units_per_row, seg_len, row_len, stride_row, unit_div, unit_mod, slot,
    CHECK: tl.constexpr, EVEN: tl.constexpr, FLAT: tl.constexpr, SEG_UNITS: tl.constexpr,
    BLOCK_U: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Per-segment min/max: rows, groups, or chunks of a tensor.

    FLAT: segment u is the run [u * seg_len, + seg_len) of the input (no division).
    SEG_UNITS: segment u is unit u (unit_div 1, unit_mod n_units).
    Reads each element once (n loads; twice in a program that meets NaN/Inf); writes 2
    floats a segment. EVEN: every segment is full and the grid has no partial tile.
    """
    u = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_ok = u < n_units
    if FLAT:
        base = u * seg_len
        length = tl.zeros_like(u) + seg_len
    else:
        start = (u % units_per_row) * seg_len
        length = tl.minimum(seg_len, row_len - start)
        base = (u // units_per_row) * stride_row + start
    lo = tl.full((BLOCK_U,), float("inf"), tl.float32)
    hi = tl.full((BLOCK_U,), float("-inf"), tl.float32)
    for l0 in range(0, seg_len, BLOCK_L):
        col = l0 + tl.arange(0, BLOCK_L)
        mask = unit_ok[:, None] & (col[None, :] < length[:, None])
        x = tl.load(x_ptr + base[:, None] + col[None, :], mask=mask, other=0.0).to(tl.float32)
        clo, chi = raw_range(x, mask, EVEN, 1)
        lo, hi = min_nan(lo, clo), max_nan(hi, chi)
    COLD_L: tl.constexpr = max(1, BLOCK_L // 4)
    if any_nonfinite(lo, hi):  # the cold pass: finite values only, and the report
        lo = tl.full((BLOCK_U,), float("inf"), tl.float32)
        hi = tl.full((BLOCK_U,), float("-inf"), tl.float32)
        bad = tl.zeros((BLOCK_U,), tl.int32)
        for l0 in range(0, seg_len, COLD_L):  # (a smaller tile: fewer registers)
            col = l0 + tl.arange(0, COLD_L)
            mask = unit_ok[:, None] & (col[None, :] < length[:, None])
            x = tl.load(x_ptr + base[:, None] + col[None, :], mask=mask, other=0.0).to(tl.float32)
            fin = mask & is_finite(x)
            lo = tl.minimum(lo, tl.min(tl.where(fin, x, float("inf")), axis=1))
            hi = tl.maximum(hi, tl.max(tl.where(fin, x, float("-inf")), axis=1))
            bad += tl.sum((mask & ~fin).to(tl.int32), axis=1)
        if CHECK:
            report_nonfinite(flags_ptr, slot, bad, u if SEG_UNITS else (u // unit_div) % unit_mod)
    tl.store(lo_ptr + u, lo, mask=unit_ok)
    tl.store(hi_ptr + u, hi, mask=unit_ok)


@triton.jit
def column_minmax_kernel(
    x_ptr, lo_ptr, hi_ptr, flags_ptr,
    n_rows, n_cols, stride_row, rows_per_split, slot,
    CHECK: tl.constexpr, EVEN: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Per-column partial min/max over a split of the rows: outputs (splits, n_cols).

    Program (c, s) reduces columns [c * BLOCK_C, +BLOCK_C) over rows
    [s * rows_per_split, +rows_per_split); finalize_qparams_kernel reduces the splits.
    EVEN: the splits and column tiles cover the view exactly, in whole row tiles.
    """
    col = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    col_ok = col < n_cols
    r_begin = split.to(tl.int64) * rows_per_split
    r_end = tl.minimum(r_begin + rows_per_split, n_rows)
    tlo = tl.full((BLOCK_R, BLOCK_C), float("inf"), tl.float32)
    thi = tl.full((BLOCK_R, BLOCK_C), float("-inf"), tl.float32)
    for r0 in range(r_begin, r_end, BLOCK_R):
        row = r0 + tl.arange(0, BLOCK_R)
        mask = (row < r_end)[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + row[:, None] * stride_row + col[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        tlo, thi = _tile_update(tlo, thi, x, mask, EVEN)
    lo = tl.reduce(tlo, 0, min_nan)
    hi = tl.reduce(thi, 0, max_nan)
    COLD_R: tl.constexpr = max(1, BLOCK_R // 4)
    if any_nonfinite(lo, hi):  # the cold pass: finite values only, and the report
        lo = tl.full((BLOCK_C,), float("inf"), tl.float32)
        hi = tl.full((BLOCK_C,), float("-inf"), tl.float32)
        bad = tl.zeros((BLOCK_C,), tl.int32)
        for r0 in range(r_begin, r_end, COLD_R):  # (a smaller tile: fewer registers)
            row = r0 + tl.arange(0, COLD_R)
            mask = (row < r_end)[:, None] & col_ok[None, :]
            x = tl.load(x_ptr + row[:, None] * stride_row + col[None, :], mask=mask,
                        other=0.0).to(tl.float32)
            fin = mask & is_finite(x)
            lo = tl.minimum(lo, tl.min(tl.where(fin, x, float("inf")), axis=0))
            hi = tl.maximum(hi, tl.max(tl.where(fin, x, float("-inf")), axis=0))
            bad += tl.sum((mask & ~fin).to(tl.int32), axis=0)
        if CHECK:
            report_nonfinite(flags_ptr, slot, bad, col)
    out = split.to(tl.int64) * n_cols + col
    tl.store(lo_ptr + out, lo, mask=col_ok)
    tl.store(hi_ptr + out, hi, mask=col_ok)
