"""Fused quantize and dequantize kernels of the float formats (FP8, MX, NVFP4, NF4).

The input is viewed as (rows, row_len), contiguous. A *unit* is a run of
``seg_len`` columns of one row (the last clipped to row_len): a group, an MX
or NVFP4 block, a whole row (per token, per channel on axis 0), a chunk of a
flat tensor (per tensor, NF4). One program takes BLOCK_U units: it loads them,
takes each amax (the max of the float32 bits of |x|, so a NaN wins as in
torch.amax), encodes the scale, encodes and packs the elements and stores
codes and scales: one read of x, one launch. A per-tensor amax (FP8 per
tensor, the NVFP4 global scale) comes from :func:`amax_kernel` first, read on
the device (no host sync).

Scale kinds (constexpr SCALE):
  SCALE_FP32   s = amax / fmax (zero: float32 eps), codes of clamp(x / s)
  SCALE_TOKEN  vLLM per token: s = max(amax / 448, 1 / (448 * 512))
  SCALE_GROUP  vLLM per token group: s = max(amax, 1e-10) / 448
  SCALE_E8M0   MX: E8M0 byte by RULE, elements as torchao brings them in range
  SCALE_NVFP4  e4m3 block scale under compressed-tensors' global scale
  SCALE_NF4    bitsandbytes absmax: full blocks x * (1 / absmax), a short last block x / absmax
"""

import numpy as np
import triton
import triton.language as tl

from .common import bf16_bits, nibble_at, pack_pairs, tile_coords
from .dequantize import nibbles
from .float_codecs import (
    FMT_NF4,
    abs_bits,
    clamp_fmax,
    e8m0_decode,
    e8m0_encode,
    element_decode,
    element_encode,
    fp8_decode,
    fp32_scale,
    mx_scaled,
    nvfp4_block_scale,
    nvfp4_global,
    nvfp4_modelopt_block_scale,
    nvfp4_modelopt_global,
)

SCALE_FP32 = tl.constexpr(0)
SCALE_TOKEN = tl.constexpr(1)
SCALE_GROUP = tl.constexpr(2)
SCALE_E8M0 = tl.constexpr(3)
SCALE_NVFP4 = tl.constexpr(4)
SCALE_NF4 = tl.constexpr(5)
TOKEN_FLOOR = tl.constexpr(float(np.float32(1.0) / np.float32(448 * 512)))  # vLLM's 1 / (448 * 512)
GROUP_EPS = tl.constexpr(float(np.float32(1e-10)))  # vLLM's per-token-group amax floor
# bitsandbytes' absmax clamp float32(1e-38), as bits: a subnormal literal would be typed float64
NF4_TINY_BITS = tl.constexpr(int(np.float32(1e-38).view(np.int32)))


@triton.jit
def amax_kernel(x_ptr, amax_ptr, n, BLOCK: tl.constexpr):
    """amax_ptr[0] (int32, zeroed by the caller) = max over n elements of the bits of |x|.

    Non-negative float32 bits order as integers, NaN above +inf, so one integer
    atomic max per program gives torch.amax(|x|) bit for bit. Reads n elements.
    """
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + i, mask=i < n, other=0.0).to(tl.float32)
    tl.atomic_max(amax_ptr, tl.max(abs_bits(x), axis=0), sem="relaxed")


@triton.jit
def unit_params(amax, short, g_amax, FMT: tl.constexpr, SCALE: tl.constexpr, RULE: tl.constexpr,
                MODELOPT: tl.constexpr):
    """(stored scale, divisor, multiplier, global scale) of units of amax (float32 vectors).

    Elements are brought in range as x / divisor * multiplier (one of the two is 1 and
    skipped at compile time by the callers through SCALE)."""
    one = tl.zeros_like(amax) + 1.0
    gs = one
    if SCALE == SCALE_FP32:
        s = fp32_scale(amax, FMT)
        return s, s, one, gs
    elif SCALE == SCALE_TOKEN:
        s = tl.maximum(fp32_scale(amax, FMT), TOKEN_FLOOR)
        return s, s, one, gs
    elif SCALE == SCALE_GROUP:
        s = tl.math.div_rn(tl.maximum(amax, GROUP_EPS), tl.zeros_like(amax) + 448.0)
        return s, s, one, gs
    elif SCALE == SCALE_E8M0:
        e = e8m0_encode(amax, FMT, RULE)
        return e, one, one, gs
    elif SCALE == SCALE_NVFP4:
        if MODELOPT:
            ws2 = nvfp4_modelopt_global(g_amax + tl.zeros_like(amax))
            bits, step = nvfp4_modelopt_block_scale(amax, ws2)
            return bits, step, one, ws2
        gs = nvfp4_global(g_amax + tl.zeros_like(amax))
        bits, value = nvfp4_block_scale(amax, gs)
        return bits, tl.math.div_rn(value, gs), one, gs
    else:
        tiny = (tl.zeros_like(amax).to(tl.int32, bitcast=True) + NF4_TINY_BITS).to(tl.float32, bitcast=True)
        a = tl.where(amax != amax, amax, tl.maximum(amax, tiny))  # torch.clamp keeps NaN
        inv = tl.math.div_rn(one, a)
        stored = tl.where(short, a, amax)
        return stored, tl.where(short, a, one), tl.where(short, one, inv), gs


@triton.jit
def encode(x, div, mul, e, FMT: tl.constexpr, SCALE: tl.constexpr, RULE: tl.constexpr,
           FULL: tl.constexpr):
    """Codes (int32) of a tile x with per-unit params broadcast to it. FULL: no unit is
    short, so NF4 multiplies (its div is 1 where mul is; x * 1 = x / 1)."""
    if SCALE == SCALE_E8M0:
        v = mx_scaled(x, e, RULE)
    elif SCALE == SCALE_NF4 and FULL:
        v = x * mul
    elif SCALE == SCALE_NF4:
        v = tl.where(mul != 1.0, x * mul, tl.math.div_rn(x, div))
    else:
        v = tl.math.div_rn(x, div)
    return element_encode(clamp_fmax(v, FMT), FMT)


@triton.jit
def float_units_kernel(
    x_ptr, q_ptr, scale_ptr, g_amax_ptr, gs_ptr,
    n_units, units_per_row, seg_len, row_len, stride_q_row,
    FMT: tl.constexpr, SCALE: tl.constexpr, RULE: tl.constexpr, MODELOPT: tl.constexpr,
    PACK: tl.constexpr, HIGH_FIRST: tl.constexpr, TENSOR: tl.constexpr, FLAT: tl.constexpr,
    BLOCK_U: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """Quantize units that fit a tile row (seg_len <= BLOCK_L): one read of x.

    TENSOR: every unit shares the amax at g_amax_ptr (int32 bits, from amax_kernel)
    and unit 0's program stores the one scale. SCALE_NVFP4 reads the tensor amax
    there for its global scale, which program 0 stores at gs_ptr. PACK: two 4-bit
    codes a byte along the row (HIGH_FIRST: the even element in the high nibble),
    a ragged row's last byte padded with the nibble of 0.0 (E2M1: 0, NF4: 7, as bitsandbytes); seg_len is
    then even. FLAT (seg_len = BLOCK_L divides row_len): unit u is the run [u * BLOCK_L, +
    BLOCK_L) of x (and of the codes, halved when packed): no division, constant strides.
    """
    u = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    unit_ok = u < n_units
    if FLAT:
        at = u * BLOCK_L
        length = tl.zeros_like(u) + BLOCK_L
        q_at = u * (BLOCK_L // 2) if PACK else at
    else:
        row = u // units_per_row
        start = (u % units_per_row) * seg_len
        length = tl.minimum(seg_len, row_len - start)
        at = row * row_len + start
        q_at = row * stride_q_row + (start // 2 if PACK else start)
    col = tl.arange(0, BLOCK_L)
    mask = unit_ok[:, None] & (col[None, :] < length[:, None])
    x = tl.load(x_ptr + at[:, None] + col[None, :], mask=mask, other=0.0).to(tl.float32)
    if TENSOR:
        g_amax = tl.load(g_amax_ptr).to(tl.float32, bitcast=True)
        amax = tl.zeros((BLOCK_U,), tl.float32) + g_amax
    else:
        if SCALE == SCALE_NVFP4:
            g_amax = tl.load(g_amax_ptr).to(tl.float32, bitcast=True)
        else:
            g_amax = 0.0  # unused
        amax = tl.max(abs_bits(x), axis=1).to(tl.float32, bitcast=True)
    stored, div, mul, gs = unit_params(amax, length < seg_len, g_amax, FMT, SCALE, RULE, MODELOPT)
    q = encode(x, div[:, None], mul[:, None], stored[:, None], FMT, SCALE, RULE, FLAT)
    if PACK:
        q = tl.where(mask, q, 7 if FMT == FMT_NF4 else 0)  # bitsandbytes pads with the code of 0.0
        half = tl.arange(0, BLOCK_L // 2)
        keep = unit_ok[:, None] & (half[None, :] < ((length + 1) // 2)[:, None])
        tl.store(q_ptr + q_at[:, None] + half[None, :], pack_pairs(q, BLOCK_U, BLOCK_L, HIGH_FIRST),
                 mask=keep)
    else:
        tl.store(q_ptr + q_at[:, None] + col[None, :], q.to(tl.uint8), mask=mask)
    if TENSOR:
        tl.store(scale_ptr + u, stored, mask=u == 0)
    else:
        tl.store(scale_ptr + u, stored.to(scale_ptr.dtype.element_ty), mask=unit_ok)
    if SCALE == SCALE_NVFP4:
        tl.store(gs_ptr + u, gs, mask=u == 0)


@triton.jit
def float_rows_kernel(
    x_ptr, q_ptr, scale_ptr, row_len,
    FMT: tl.constexpr, SCALE: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """FP8 per row (token, channel) for rows longer than a tile: one program a row, the
    amax in a first pass, the codes in a second (x is read twice, from L2 when it fits)."""
    row = tl.program_id(0).to(tl.int64)
    base = row * row_len
    acc = tl.zeros((BLOCK_L,), tl.int32)
    for c0 in range(0, row_len, BLOCK_L):
        col = c0 + tl.arange(0, BLOCK_L)
        x = tl.load(x_ptr + base + col, mask=col < row_len, other=0.0).to(tl.float32)
        acc = tl.maximum(acc, abs_bits(x))
    amax = tl.zeros((1,), tl.float32) + tl.max(acc, axis=0).to(tl.float32, bitcast=True)
    stored, div, mul, gs = unit_params(amax, amax != amax, amax, FMT, SCALE, 0, False)
    for c0 in range(0, row_len, BLOCK_L):
        col = c0 + tl.arange(0, BLOCK_L)
        x = tl.load(x_ptr + base + col, mask=col < row_len, other=0.0).to(tl.float32)
        q = encode(x, div, mul, stored, FMT, SCALE, 0, False)
        tl.store(q_ptr + base + col, q.to(tl.uint8), mask=col < row_len)
    tl.store(scale_ptr + row + tl.arange(0, 1), stored)


@triton.jit
def float_blocks_kernel(
    x_ptr, q_ptr, scale_ptr, n_rows, n_cols, bn, bk, col_blocks,
    FMT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """FP8 2-D blocks (DeepSeek-V3 weight_scale_inv): one program a (bn, bk) block, its
    amax over the real elements (a ragged edge block counts as zero padded)."""
    pid = tl.program_id(0).to(tl.int64)
    bi = pid // col_blocks
    bj = pid % col_blocks
    r = tl.arange(0, BLOCK_N)
    c = tl.arange(0, BLOCK_K)
    row = bi * bn + r
    col = bj * bk + c
    mask = ((r < bn) & (row < n_rows))[:, None] & ((c < bk) & (col < n_cols))[None, :]
    at = row[:, None] * n_cols + col[None, :]
    x = tl.load(x_ptr + at, mask=mask, other=0.0).to(tl.float32)
    amax = tl.max(tl.max(abs_bits(x), axis=1), axis=0).to(tl.float32, bitcast=True)
    s = fp32_scale(tl.zeros((1, 1), tl.float32) + amax, FMT)
    q = element_encode(clamp_fmax(tl.math.div_rn(x, s), FMT), FMT)
    tl.store(q_ptr + at, q.to(tl.uint8), mask=mask)
    tl.store(scale_ptr + pid + tl.arange(0, 1)[:, None], s)


@triton.jit
def scale_values(s, gs, SCALE: tl.constexpr, MODELOPT: tl.constexpr):
    """float32 multipliers of stored scales s (NVFP4: with the stored global scale gs)."""
    if SCALE == SCALE_E8M0:
        return e8m0_decode(s.to(tl.int32))
    elif SCALE == SCALE_NVFP4:
        v = fp8_decode(s.to(tl.int32), 0)
        if MODELOPT:
            return v * gs
        else:
            return tl.math.div_rn(v, gs)
    else:
        return s


@triton.jit
def float_dequant_kernel(
    q_ptr, y_ptr, scale_ptr, gs_ptr,
    n_rows, n_cols, stride_q_row, row_div, units_per_row, seg_len, col_tiles,
    FMT: tl.constexpr, SCALE: tl.constexpr, MODELOPT: tl.constexpr, PACKED: tl.constexpr,
    HIGH_FIRST: tl.constexpr, BF16: tl.constexpr, UNITS: tl.constexpr, EVEN_C: tl.constexpr,
    BN: tl.constexpr, BK: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y = value(code) * scale of its unit, one read of the codes, one write of y.

    UNITS 1: a row is a unit (the caller views flat units as rows): one scale a row, decoded
    once, and packed bytes loaded once for both their nibbles (n_cols even). UNITS 2: one
    scale for all (per tensor). UNITS 3: 2-D blocks of the constant shape (BN, BK), unit
    (row // BN) * units_per_row + col // BK. UNITS 0: unit (row // row_div) * units_per_row +
    col // seg_len (ragged rows), a packed byte loaded for each column."""
    if EVEN_C:  # n_cols == BLOCK_C: constant strides (wide loads and stores)
        n_cols = BLOCK_C
        stride_q_row = BLOCK_C // 2 if PACKED else BLOCK_C
    tile_c, row, col, row_ok, col_ok = tile_coords(col_tiles, n_rows, n_cols, BLOCK_R, BLOCK_C)
    mask = row_ok[:, None] & col_ok[None, :]
    if PACKED and UNITS == 1:
        half = tile_c * (BLOCK_C // 2) + tl.arange(0, BLOCK_C // 2)
        b = tl.load(q_ptr + row[:, None] * stride_q_row + half[None, :],
                    mask=row_ok[:, None] & (half < n_cols // 2)[None, :], other=0)
        first, second = nibbles(b.to(tl.int32), False, HIGH_FIRST)
        c = tl.reshape(tl.join(first, second), (BLOCK_R, BLOCK_C))
    elif PACKED:
        b = tl.load(q_ptr + row[:, None] * stride_q_row + (col // 2)[None, :], mask=mask, other=0)
        c = nibble_at(b, col[None, :], False, HIGH_FIRST)
    else:
        c = tl.load(q_ptr + row[:, None] * stride_q_row + col[None, :], mask=mask,
                    other=0).to(tl.int32)
    if UNITS == 1:
        s = tl.load(scale_ptr + row, mask=row_ok, other=0)[:, None]
    elif UNITS == 2:
        s = tl.load(scale_ptr)
    elif UNITS == 3:
        unit = (row // BN)[:, None] * units_per_row + (col // BK)[None, :]
        s = tl.load(scale_ptr + unit, mask=mask, other=0)
    else:
        unit = (row // row_div)[:, None] * units_per_row + (col // seg_len)[None, :]
        s = tl.load(scale_ptr + unit, mask=mask, other=0)
    gs = 1.0
    if SCALE == SCALE_NVFP4:
        gs = tl.load(gs_ptr)
    y = element_decode(c, FMT) * scale_values(s, gs, SCALE, MODELOPT)
    if BF16:
        y = bf16_bits(y)
    tl.store(y_ptr + row[:, None] * n_cols + col[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


__all__ = ["amax_kernel", "float_units_kernel", "float_rows_kernel", "float_blocks_kernel",
           "float_dequant_kernel", "FMT_NF4"]
