"""Device helpers shared by the kernels: rounding, qparams, codes, nibbles.

Each helper is the DESIGN.md section 2 formula written so that a GPU gives
the NumPy reference's bits:
- divisions use ``tl.math.div_rn`` (plain ``/`` is approximate on NVIDIA);
- ``rint`` is the add-and-subtract of 1.5 * 2^23, exact round-half-to-even
  for |v| < 2^22 in IEEE float32 (libdevice's rint does not run under the
  interpreter); larger |v| are clamped first, which changes no code since
  every code range lies well inside 2^22;
- kernels are launched with ``enable_fp_fusion=False`` so that no multiply
  and add are contracted into one FMA.
"""

import triton
import triton.language as tl

RINT_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: the sum keeps rint(v) in its low bits
RINT_LIMIT = tl.constexpr(4194304.0)  # 2^22: the trick is exact below this magnitude
FLOAT32_TINY = tl.constexpr(1.1754943508222875e-38)  # smallest normal float32


@triton.jit
def is_finite(x):
    return (x == x) & (tl.abs(x) != float("inf"))


@triton.jit
def rint(v):
    """Round half to even, for |v| <= 2^22 (callers clamp first)."""
    return (v + RINT_MAGIC) - RINT_MAGIC


@triton.jit
def qparams(lo, hi, QMIN: tl.constexpr, QMAX: tl.constexpr, SYMMETRIC: tl.constexpr):
    """(scale float32, zero point int32) from float32 ranges, element-wise."""
    if SYMMETRIC:
        amax = tl.maximum(tl.abs(lo), tl.abs(hi))
        scale = tl.math.div_rn(amax, tl.full(amax.shape, QMAX, tl.float32))
    else:
        lo = tl.minimum(lo, 0.0)
        hi = tl.maximum(hi, 0.0)
        scale = tl.math.div_rn(hi - lo, tl.full(lo.shape, QMAX - QMIN, tl.float32))
    ok = (scale >= FLOAT32_TINY) & (scale < float("inf"))  # false for NaN too
    scale = tl.where(ok, scale, 1.0)
    if SYMMETRIC:
        zero_point = tl.zeros(scale.shape, tl.int32)
    else:
        shifted = QMIN - rint(tl.minimum(tl.maximum(tl.math.div_rn(lo, scale), -RINT_LIMIT),
                                         RINT_LIMIT))
        zero_point = tl.minimum(tl.maximum(shifted, QMIN), QMAX).to(tl.int32)
    return scale, zero_point


@triton.jit
def codes(x, inv_scale, zero_point, QMIN: tl.constexpr, QMAX: tl.constexpr):
    """clamp(rint(x * inv_scale) + zp, qmin, qmax) as int32; NaN gives the zero point."""
    v = x * inv_scale
    v = tl.where(v == v, v, 0.0)
    v = rint(tl.minimum(tl.maximum(v, -RINT_LIMIT), RINT_LIMIT))
    q = v.to(tl.int32) + zero_point
    return tl.minimum(tl.maximum(q, QMIN), QMAX)


@triton.jit
def pack_pairs(q, ROWS: tl.constexpr, COLS: tl.constexpr, HIGH_FIRST: tl.constexpr):
    """int32 codes (ROWS, COLS) -> uint8 (ROWS, COLS // 2), two 4-bit nibbles a byte."""
    first, second = tl.split(tl.reshape(q, (ROWS, COLS // 2, 2)))
    if HIGH_FIRST:
        byte = ((first & 0xF) << 4) | (second & 0xF)
    else:
        byte = ((second & 0xF) << 4) | (first & 0xF)
    return byte.to(tl.uint8)


@triton.jit
def unpack_pairs(b, ROWS: tl.constexpr, HALF: tl.constexpr, SIGNED: tl.constexpr,
                 HIGH_FIRST: tl.constexpr):
    """uint8 (ROWS, HALF) -> int32 codes (ROWS, 2 * HALF), sign-extended when SIGNED."""
    b = b.to(tl.int32)
    high = (b >> 4) & 0xF
    low = b & 0xF
    if SIGNED:
        high = (high ^ 8) - 8
        low = (low ^ 8) - 8
    if HIGH_FIRST:
        pair = tl.join(high, low)
    else:
        pair = tl.join(low, high)
    return tl.reshape(pair, (ROWS, 2 * HALF))
