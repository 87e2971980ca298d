"""The MSE search's error sweep: every candidate's squared error in one read of the data."""

import triton
import triton.language as tl

from .common import codes, is_finite


@triton.jit
def mse_sweep_kernel(
    x_ptr, inv_ptr, scale_ptr, zp_ptr, err_ptr,
    # unit u is ``seg`` values (the last of a row may be shorter) at
    # (u // per_row) * stride + (u % per_row) * seg, in the input's dtype; each unit is
    # cut into n_chunks chunks of BLOCK_L, a program takes BLOCK_U (unit, chunk) pairs
    n_units, per_row, seg, cols, stride, n_chunks, n_cand,
    QMIN: tl.constexpr, QMAX: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_L: tl.constexpr,
    HALF_RANGE: tl.constexpr = False,
):
    """Partial sums of (dequantize(quantize(x)) - x)^2 in float64 per (unit, chunk, candidate).

    Reads x once; per candidate reads n_units * 3 params (cached); writes
    n_units * n_chunks * n_cand float64. Non-finite values contribute 0.
    """
    s = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    s_ok = s < n_units * n_chunks
    unit = s // n_chunks
    start = (unit // per_row) * stride + (unit % per_row) * seg
    length = tl.minimum(seg, cols - (unit % per_row) * seg)
    col = (s % n_chunks)[:, None] * BLOCK_L + tl.arange(0, BLOCK_L)[None, :]
    mask = s_ok[:, None] & (col < length[:, None])
    x = tl.load(x_ptr + start[:, None] + col, mask=mask, other=0.0).to(tl.float32)
    fin = mask & is_finite(x)
    x = tl.where(fin, x, 0.0)
    x64 = x.to(tl.float64)
    for c in range(n_cand):
        at = unit * n_cand + c
        inv = tl.load(inv_ptr + at, mask=s_ok, other=1.0)
        scale = tl.load(scale_ptr + at, mask=s_ok, other=1.0)
        zp = tl.load(zp_ptr + at, mask=s_ok, other=0)
        q = codes(x, inv[:, None], zp[:, None], QMIN, QMAX, HALF_RANGE)  # inv: the scale there
        deq = (q - zp[:, None]).to(tl.float32) * scale[:, None]
        d = deq.to(tl.float64) - x64
        err = tl.sum(tl.where(fin, d * d, 0.0), axis=1)
        tl.store(err_ptr + s * n_cand + c, err, mask=s_ok)
