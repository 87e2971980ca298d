"""Quantize (and pack): fused with min/max calibration, or with given qparams."""

import triton
import triton.language as tl

from .common import codes, is_finite, pack_pairs, qparams


@triton.jit
def qparams_kernel(
    lo_ptr, hi_ptr, scale_ptr, zp_ptr, inv_ptr, n,
    QMIN: tl.constexpr, QMAX: tl.constexpr, SYMMETRIC: tl.constexpr, BLOCK: tl.constexpr,
):
    """Per-unit (lo, hi) -> scale, zero point and 1 / scale. A unit with no finite
    value (lo > hi, from the masked reductions) gets the range (0, 0)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    lo = tl.load(lo_ptr + i, mask=m, other=0.0)
    hi = tl.load(hi_ptr + i, mask=m, other=0.0)
    empty = lo > hi
    scale, zp = qparams(tl.where(empty, 0.0, lo), tl.where(empty, 0.0, hi), QMIN, QMAX, SYMMETRIC)
    tl.store(scale_ptr + i, scale, mask=m)
    tl.store(zp_ptr + i, zp, mask=m)
    tl.store(inv_ptr + i, tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale), mask=m)


@triton.jit
def reciprocal_kernel(scale_ptr, inv_ptr, n, BLOCK: tl.constexpr):
    """inv = 1 / scale, one IEEE division per unit (for qparams given by the caller)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    s = tl.load(scale_ptr + i, mask=m, other=1.0)
    tl.store(inv_ptr + i, tl.math.div_rn(tl.full(s.shape, 1.0, tl.float32), s), mask=m)


@triton.jit
def fused_segment_kernel(
    x_ptr, q_ptr, scale_ptr, zp_ptr, bad_ptr,
    n_units, units_per_row, seg_len, row_len, stride_row, stride_q_row,
    QMIN: tl.constexpr, QMAX: tl.constexpr, SYMMETRIC: tl.constexpr,
    PACK: tl.constexpr, HIGH_FIRST: tl.constexpr,
    BLOCK_U: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Min/max calibrate + quantize (+ pack) with one read: each unit fits one tile row.

    Units are row segments (groups, or whole rows for per-token and per-channel
    axis 0). Reads n elements once; writes codes (n bytes, n / 2 packed) and
    3 values per unit. For packing, seg_len must be even (bytes never straddle
    units); a short odd last segment pads its last byte with a zero nibble.
    """
    u = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_ok = u < n_units
    row = u // units_per_row
    start = (u % units_per_row) * seg_len
    length = tl.minimum(seg_len, row_len - start)
    col = tl.arange(0, BLOCK_L)
    mask = unit_ok[:, None] & (col[None, :] < length[:, None])
    x = tl.load(x_ptr + (row * stride_row + start)[:, None] + col[None, :], mask=mask,
                other=0.0).to(tl.float32)
    fin = mask & is_finite(x)
    lo = tl.min(tl.where(fin, x, float("inf")), axis=1)
    hi = tl.max(tl.where(fin, x, float("-inf")), axis=1)
    empty = lo > hi
    scale, zp = qparams(tl.where(empty, 0.0, lo), tl.where(empty, 0.0, hi), QMIN, QMAX, SYMMETRIC)
    inv = tl.math.div_rn(tl.full(scale.shape, 1.0, tl.float32), scale)
    q = tl.where(mask, codes(x, inv[:, None], zp[:, None], QMIN, QMAX), 0)
    if PACK:
        byte = pack_pairs(q, BLOCK_U, BLOCK_L, HIGH_FIRST)
        half = tl.arange(0, BLOCK_L // 2)
        out = (row * stride_q_row + start // 2)[:, None] + half[None, :]
        keep = unit_ok[:, None] & (half[None, :] < ((length + 1) // 2)[:, None])
        tl.store(q_ptr + out, byte, mask=keep)
    else:
        out = (row * stride_q_row + start)[:, None] + col[None, :]
        tl.store(q_ptr + out, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + u, scale, mask=unit_ok)
    tl.store(zp_ptr + u, zp, mask=unit_ok)
    tl.store(bad_ptr + u, (mask & ~fin).to(tl.int32).sum(axis=1), mask=unit_ok)


@triton.jit
def params_tile(ptr, row, col, row_ok, col_ok, units_per_row, group_size, MODE: tl.constexpr):
    """Per-unit values at a (BLOCK_R, BLOCK_C) tile. MODE 0: one value; 1: per column;
    2: per row; 3: per group of group_size columns (units_per_row groups a row)."""
    if MODE == 0:
        v = tl.load(ptr + tl.zeros(row.shape, tl.int64))[:, None]
    elif MODE == 1:
        v = tl.load(ptr + col, mask=col_ok, other=0)[None, :]
    elif MODE == 2:
        v = tl.load(ptr + row, mask=row_ok, other=0)[:, None]
    else:
        idx = row[:, None] * units_per_row + (col // group_size)[None, :]
        v = tl.load(ptr + idx, mask=row_ok[:, None] & col_ok[None, :], other=0)
    return v


@triton.jit
def quantize_tile_kernel(
    x_ptr, q_ptr, inv_ptr, zp_ptr,
    n_rows, n_cols, stride_row, stride_q_row, units_per_row, group_size, col_tiles,
    MODE: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr,
    PACK: tl.constexpr, HIGH_FIRST: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Quantize (+ pack) a (rows, cols) view with given per-unit 1/scale and zero points.

    Reads n elements and n_units params (cached); writes n codes (n / 2 bytes
    packed). BLOCK_C is even, so packed pairs stay in one tile. The grid is
    1-D (row tile, column tile) flattened: a second grid axis stops at 65535.
    """
    pid = tl.program_id(0).to(tl.int64)
    tile_c = pid % col_tiles
    row = (pid // col_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tile_c * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = row < n_rows
    col_ok = col < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + row[:, None] * stride_row + col[None, :], mask=mask,
                other=0.0).to(tl.float32)
    inv = params_tile(inv_ptr, row, col, row_ok, col_ok, units_per_row, group_size, MODE)
    zp = params_tile(zp_ptr, row, col, row_ok, col_ok, units_per_row, group_size, MODE)
    q = tl.where(mask, codes(x, inv, zp, QMIN, QMAX), 0)
    if PACK:
        byte = pack_pairs(q, BLOCK_R, BLOCK_C, HIGH_FIRST)
        half = tile_c * (BLOCK_C // 2) + tl.arange(0, BLOCK_C // 2)
        keep = row_ok[:, None] & (half < (n_cols + 1) // 2)[None, :]
        tl.store(q_ptr + row[:, None] * stride_q_row + half[None, :], byte, mask=keep)
    else:
        tl.store(q_ptr + row[:, None] * stride_q_row + col[None, :],
                 q.to(q_ptr.dtype.element_ty), mask=mask)
