"""GGUF Q8_0, Q4_0 and MXFP4 blocks: 32 values -> a float16 scale (an E8M0 byte for MXFP4)
and 32 int8 codes or 16 nibble bytes.

The formulas of gpuquant/core/ggml_blocks.py (gguf-py's, one float32
rounding a step): divisions with ``div_rn``, launched with
``enable_fp_fusion=False`` so that Q4_0's ``x * id + 8.5`` stays two
roundings. Each program also counts, into ``flags[2 * pid]``, the
non-finite values of its blocks and, into ``flags[2 * pid + 1]``, the
blocks whose scale float16 cannot hold; the launcher refuses both.
"""

import triton
import triton.language as tl

from .common import is_finite

HALF_DOWN = tl.constexpr(0.49999997)  # 0.5 - 2^-25: trunc(v + this) rounds half away (v >= 0)
F16_LIMIT = tl.constexpr(65520.0)  # the smallest float32 that rounds to float16 inf
SIGN_BIT = tl.constexpr(-2147483648)  # 0x80000000 as an int32


@triton.jit
def _store_scale(out_ptr, base, d, ok, flags_ptr, bad):
    """Write d as float16 (little-endian bytes 0-1 of each block) and the program's flags."""
    bits = d.to(tl.float16).to(tl.uint16, bitcast=True).to(tl.int32)
    tl.store(out_ptr + base, (bits & 0xFF).to(tl.uint8), mask=ok)
    tl.store(out_ptr + base + 1, (bits >> 8).to(tl.uint8), mask=ok)
    big = (ok & (tl.abs(d) >= F16_LIMIT)).to(tl.int32)
    pid = tl.program_id(0)
    tl.store(flags_ptr + 2 * pid, bad)
    tl.store(flags_ptr + 2 * pid + 1, tl.sum(big, axis=0))


@triton.jit
def _halves(x_ptr, n_blocks, BLOCK_B: tl.constexpr):
    """This program's blocks of 32 as their halves: (block index, in range, j = 0..15,
    x[j], x[j + 16] as float32, the count of non-finite values, the blocks' amax)."""
    b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    ok = b < n_blocks
    j = tl.arange(0, 16)
    ptr = x_ptr + b[:, None] * 32 + j[None, :]
    lo = tl.load(ptr, mask=ok[:, None], other=0.0).to(tl.float32)
    hi = tl.load(ptr + 16, mask=ok[:, None], other=0.0).to(tl.float32)
    nonfinite = (~is_finite(lo)).to(tl.int32) + (~is_finite(hi)).to(tl.int32)
    bad = tl.sum(tl.sum(nonfinite, axis=1) * ok.to(tl.int32), axis=0)
    amax = tl.maximum(tl.max(tl.abs(lo), axis=1), tl.max(tl.abs(hi), axis=1))
    return b, ok, j, lo, hi, bad, amax


@triton.jit
def q8_0_kernel(x_ptr, out_ptr, flags_ptr, n_blocks, BLOCK_B: tl.constexpr):
    """d = amax / 127; q = trunc(|x| * (1 / d) + (0.5 - 2^-25)) with x's sign.

    Reads 128 bytes a block (float32), writes 34.
    """
    b = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    ok = b < n_blocks
    j = tl.arange(0, 32)
    x = tl.load(x_ptr + b[:, None] * 32 + j[None, :], mask=ok[:, None], other=0.0).to(tl.float32)
    bad = tl.sum(tl.sum((ok[:, None] & ~is_finite(x)).to(tl.int32), axis=1), axis=0)
    a = tl.abs(x)
    d = tl.math.div_rn(tl.max(a, axis=1), tl.full((BLOCK_B,), 127.0, tl.float32))
    inv = tl.where(d == 0, 0.0, tl.math.div_rn(tl.full((BLOCK_B,), 1.0, tl.float32), d))
    q = tl.floor(a * inv[:, None] + HALF_DOWN).to(tl.int32)
    q = tl.where(x < 0, -q, q)
    base = b * 34
    tl.store(out_ptr + base[:, None] + 2 + j[None, :], (q & 0xFF).to(tl.uint8), mask=ok[:, None])
    _store_scale(out_ptr, base, d, ok, flags_ptr, bad)


@triton.jit
def q4_0_kernel(x_ptr, out_ptr, flags_ptr, n_blocks, BLOCK_B: tl.constexpr):
    """m = the first value of largest |x|; d = m / -8; q = min(trunc(x * (1 / d) + 8.5), 15);
    byte j = q[j] | q[j + 16] << 4. Reads 128 bytes a block (float32), writes 18."""
    b, ok, j, lo, hi, bad, amax = _halves(x_ptr, n_blocks, BLOCK_B)
    first = tl.minimum(tl.min(tl.where(tl.abs(lo) == amax[:, None], j[None, :], 32), axis=1),
                       tl.min(tl.where(tl.abs(hi) == amax[:, None], j[None, :] + 16, 32), axis=1))
    # the sign bit of that first value (-0.0 included): its int32 bits are negative
    sign_lo = tl.where(j[None, :] == first[:, None], lo.to(tl.int32, bitcast=True) < 0, False)
    sign_hi = tl.where(j[None, :] + 16 == first[:, None], hi.to(tl.int32, bitcast=True) < 0,
                       False)
    negative = (tl.max(sign_lo.to(tl.int32), axis=1) + tl.max(sign_hi.to(tl.int32), axis=1)) > 0
    # m = +-amax by its sign bit, so that a first -0.0 gives -0.0 as in gguf-py (Triton 3.6
    # computes -x as 0 - x, which is +0.0 for x = 0)
    sign = tl.where(negative, SIGN_BIT, 0)
    m = ((amax.to(tl.int32, bitcast=True) & 0x7FFFFFFF) | sign).to(tl.float32, bitcast=True)
    d = tl.math.div_rn(m, tl.full((BLOCK_B,), -8.0, tl.float32))
    inv = tl.where(d == 0, 0.0, tl.math.div_rn(tl.full((BLOCK_B,), 1.0, tl.float32), d))
    q_lo = tl.minimum(tl.floor(lo * inv[:, None] + 8.5), 15.0).to(tl.int32)
    q_hi = tl.minimum(tl.floor(hi * inv[:, None] + 8.5), 15.0).to(tl.int32)
    base = b * 18
    tl.store(out_ptr + base[:, None] + 2 + j[None, :], (q_lo | (q_hi << 4)).to(tl.uint8),
             mask=ok[:, None])
    _store_scale(out_ptr, base, d, ok, flags_ptr, bad)


@triton.jit
def _pow2(k):
    """float32 2^k of int32 -126 <= k <= 127, from the exponent bits."""
    return ((k + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _e2m1_code(x, p1, p2, top):
    """ggml's nibble of x at t = |x| * p1 * p2 (|x| / d): the nearest of 0, 1, 2, 3, 4, 6, 8,
    12, the lower on a tie; 8 | magnitude for x < 0 (a zero code stays 0)."""
    t = tl.abs(x) * p1[:, None] * p2[:, None]
    m = tl.minimum(tl.ceil(t - 0.5), 4.0).to(tl.int32)
    m = m + (t > 5.0).to(tl.int32) + (t > 7.0).to(tl.int32) + (t > 10.0).to(tl.int32)
    m = tl.where(top[:, None], tl.minimum(m, 5), m)
    return tl.where((x < 0) & (m != 0), m | 8, m)


@triton.jit
def mxfp4_kernel(x_ptr, out_ptr, flags_ptr, n_blocks, BLOCK_B: tl.constexpr):
    """e = floor(log2(amax)) + 125 (mod 256, 0 for amax = 0), log2 rounded to float32 as
    gguf-py's; nibbles as core/ggml_blocks.py's _mxfp4. Reads 128 bytes a block, writes 17.

    log2 is taken in float64 and rounded to float32: the correctly rounded float32 log2
    (the GPU's float32 lg2 is approximate), whose floor is NumPy's at every float32 (checked
    on x86 for all subnormals and the top 2^16 mantissas of every exponent).
    """
    b, ok, j, lo, hi, bad, amax = _halves(x_ptr, n_blocks, BLOCK_B)
    positive = amax > 0
    lg = tl.floor(tl.log2(tl.where(positive, amax, 1.0).to(tl.float64)).to(tl.float32))
    e = tl.where(positive, lg.to(tl.int32) + 125, 0) & 0xFF
    shift = 128 - e  # |x| * 2^shift in two exact steps: 2^128 is no float32
    half = shift >> 1
    p1, p2 = _pow2(half), _pow2(shift - half)
    top = e == 253  # 8d and 12d overflow to inf: gguf-py's codes stop at 6d
    q = _e2m1_code(lo, p1, p2, top) | (_e2m1_code(hi, p1, p2, top) << 4)
    base = b * 17
    tl.store(out_ptr + base[:, None] + 1 + j[None, :], q.to(tl.uint8), mask=ok[:, None])
    tl.store(out_ptr + base, e.to(tl.uint8), mask=ok)
    pid = tl.program_id(0)
    tl.store(flags_ptr + 2 * pid, bad)
    tl.store(flags_ptr + 2 * pid + 1, 0)
