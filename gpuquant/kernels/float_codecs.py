"""Device codecs of the float formats: scale encoders, element encoders and decoders.

Every encoder is integer/bit arithmetic or exact float32 operations, so that
the interpreter and an NVIDIA GPU give the same bits (no libdevice, no
hardware cvt): divisions are ``tl.math.div_rn``; multiplications by powers of
two are exact; rounding to nearest even is the add-and-subtract of
common.RINT_MAGIC or an integer carry on the float32 bits.

Element format codes (constexpr ``FMT``): FMT_E4M3, FMT_E5M2, FMT_E2M1, FMT_NF4, and
FMT_E2M1_CT / FMT_E2M1_MO: E2M1 with compressed-tensors' / ModelOpt's signs and NaN codes
(NVFP4): the peers differ on zeros and NaN.
Scale rules of the E8M0 encoder (constexpr ``RULE``): RULE_FLOOR, RULE_RCEIL,
RULE_EVEN, as torchao's ``to_mx`` computes them.
"""

import numpy as np
import triton
import triton.language as tl

from .common import RINT_BITS, RINT_MAGIC

FMT_E4M3 = tl.constexpr(0)
FMT_E5M2 = tl.constexpr(1)
FMT_E2M1 = tl.constexpr(2)
FMT_NF4 = tl.constexpr(3)
FMT_E2M1_CT = tl.constexpr(4)
FMT_E2M1_MO = tl.constexpr(5)
MIN_E4M3_SUB = tl.constexpr(0.001953125)  # 2^-9, ModelOpt's floor of a block scale
RULE_FLOOR = tl.constexpr(0)
RULE_RCEIL = tl.constexpr(1)
RULE_EVEN = tl.constexpr(2)
FLOAT32_EPS = tl.constexpr(1.1920928955078125e-07)
MIN_NORMAL = tl.constexpr(1.1754943508222875e-38)  # 2^-126

# bitsandbytes' NF4 codebook (float32) and the midpoints its quantizer bucketizes on
_NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                 -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                 0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
                 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                 0.7229568362236023, 1.0], dtype=np.float32)
NF4_CODEBOOK = tuple(float(v) for v in _NF4)
_MID = tuple(float(v) for v in (_NF4[:-1] + _NF4[1:]) / np.float32(2))
NF4_M0, NF4_M1, NF4_M2, NF4_M3 = (tl.constexpr(v) for v in _MID[0:4])
NF4_M4, NF4_M5, NF4_M6, NF4_M7 = (tl.constexpr(v) for v in _MID[4:8])
NF4_M8, NF4_M9, NF4_M10, NF4_M11 = (tl.constexpr(v) for v in _MID[8:12])
NF4_M12, NF4_M13, NF4_M14 = (tl.constexpr(v) for v in _MID[12:15])
NF4_C0, NF4_C1, NF4_C2, NF4_C3 = (tl.constexpr(v) for v in NF4_CODEBOOK[0:4])
NF4_C4, NF4_C5, NF4_C6, NF4_C7 = (tl.constexpr(v) for v in NF4_CODEBOOK[4:8])
NF4_C8, NF4_C9, NF4_C10, NF4_C11 = (tl.constexpr(v) for v in NF4_CODEBOOK[8:12])
NF4_C12, NF4_C13, NF4_C14, NF4_C15 = (tl.constexpr(v) for v in NF4_CODEBOOK[12:16])


@triton.jit
def fmax_of(FMT: tl.constexpr):
    """The largest finite magnitude of an element format (NF4: the normalised 1)."""
    if FMT == FMT_E4M3:
        return 448.0
    elif FMT == FMT_E5M2:
        return 57344.0
    elif FMT == FMT_NF4:
        return 1.0
    else:
        return 6.0


@triton.jit
def emax_of(FMT: tl.constexpr):
    """The exponent of the largest power of two of the format (torchao's *_MAX_POW2)."""
    if FMT == FMT_E4M3:
        return 8
    elif FMT == FMT_E5M2:
        return 15
    else:
        return 2


@triton.jit
def abs_bits(x):
    """The float32 bits of |x| as int32 (NaN sorts above +inf, as a max wants)."""
    return x.to(tl.int32, bitcast=True) & 0x7FFFFFFF


@triton.jit
def fp32_scale(amax, FMT: tl.constexpr):
    """amax / fmax in IEEE float32; a zero scale becomes float32 eps (compressed-tensors)."""
    s = tl.math.div_rn(amax, tl.zeros_like(amax) + fmax_of(FMT))
    return tl.where(s == 0.0, FLOAT32_EPS, s)


@triton.jit
def e8m0_encode(amax, FMT: tl.constexpr, RULE: tl.constexpr):
    """The biased E8M0 byte (int32 0..255) of a block's amax, by torchao's rules."""
    if RULE == RULE_RCEIL:
        d = tl.math.div_rn(amax, tl.zeros_like(amax) + fmax_of(FMT))
        b = d.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        eb = b >> 23
        man = b & 0x7FFFFF
        sub = (man > 0x400000).to(tl.int32)  # subnormal: above 2^-127 rounds up to 2^-126
        e = tl.where(eb == 0, sub, tl.minimum(eb + (man != 0).to(tl.int32), 254))
        e = tl.where(b == 0x7F800000, 254, e)
        return tl.where(b > 0x7F800000, 255, e)
    else:
        b = amax.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        nan = b > 0x7F800000
        if RULE == RULE_EVEN:
            if FMT == FMT_E4M3:
                b = (tl.minimum(b, 0x7F800000) + (1 << 19)) & 0x7F800000
            elif FMT == FMT_E5M2:
                b = (tl.minimum(b, 0x7F800000) + (1 << 20)) & 0x7F800000
            else:
                b = (tl.minimum(b, 0x7F800000) + (1 << 21)) & 0x7F800000
        e = (b >> 23) - 127 - emax_of(FMT)
        e = tl.minimum(tl.maximum(e, -127), 128) + 127
        return tl.where(nan, 255, e)


@triton.jit
def mx_scaled(x, e, RULE: tl.constexpr):
    """x brought to the element range by the E8M0 byte e, as torchao does it: FLOOR/EVEN
    divide by max(2^(e-127), 2^-126) (255 gives +inf), RCEIL multiplies by 2^(127-e)
    (1 for e = 0, NaN for 255). e is a unit's (broadcast): its divisor is inverted once."""
    if RULE == RULE_RCEIL:
        m = (tl.maximum(254 - e, 0) << 23).to(tl.float32, bitcast=True)
        m = tl.where(e == 254, tl.full(e.shape, 0x00400000, tl.int32).to(tl.float32, bitcast=True), m)
        m = tl.where(e == 0, 1.0, m)
        m = tl.where(e == 255, float("nan"), m)
        return x * m
    else:  # x / d = x * (1 / d) bit for bit: d is a power of two (or +inf) whose reciprocal
        # is exact (2^-127 .. 2^126, or 0), so both round the same exact value, once a unit
        d = tl.maximum((e << 23).to(tl.float32, bitcast=True), MIN_NORMAL)
        return x * tl.math.div_rn(tl.zeros_like(d) + 1.0, d)


@triton.jit
def e8m0_decode(e):
    """2^(e-127) as float32 (e = 0: the subnormal 2^-127), 255: NaN."""
    v = (e << 23).to(tl.float32, bitcast=True)
    v = tl.where(e == 0, tl.full(e.shape, 0x00400000, tl.int32).to(tl.float32, bitcast=True), v)
    return tl.where(e == 255, float("nan"), v)


@triton.jit
def fp8_encode(v, FMT: tl.constexpr):
    """Bits (int32, 0..255) of float32 v rounded to nearest even in e4m3fn / e5m2.

    v is already clamped to +/-fmax; NaN gives 0x7F with its sign, as torch casts it.
    """
    if FMT == FMT_E4M3:
        M: tl.constexpr = 3
        BIAS: tl.constexpr = 7
        SUB_MUL: tl.constexpr = 512.0  # 2^(BIAS - 1 + M): subnormal step 2^-9
        NAN_CODE: tl.constexpr = 0x7F
    else:
        M: tl.constexpr = 2
        BIAS: tl.constexpr = 15
        SUB_MUL: tl.constexpr = 65536.0  # 2^-16 steps
        NAN_CODE: tl.constexpr = 0x7F
    u = v.to(tl.int32, bitcast=True)
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    code = tl.where(a > 0x7F800000, NAN_CODE, magnitude_code(tl.minimum(a, 0x7F800000), M, BIAS,
                                                              SUB_MUL))
    return code | sign


@triton.jit
def magnitude_code(a, M: tl.constexpr, BIAS: tl.constexpr, SUB_MUL: tl.constexpr):
    """The minifloat code (int32) of the float32 magnitude bits ``a`` (int32, finite, at most the
    format's max), rounded to nearest even: subnormals (below 2^(1 - BIAS)) as rint(a *
    SUB_MUL) read from the bits of a sum with RINT_MAGIC (no conversion instruction); normals by
    an integer carry on the bits."""
    SHIFT: tl.constexpr = 23 - M
    small = a < ((128 - BIAS) << 23)
    normal = ((a + ((1 << (SHIFT - 1)) - 1) + ((a >> SHIFT) & 1)) >> SHIFT) - ((127 - BIAS) << M)
    af = tl.where(small, a, 0).to(tl.float32, bitcast=True)
    subnormal = (af * SUB_MUL + RINT_MAGIC).to(tl.int32, bitcast=True) - RINT_BITS
    return tl.where(small, subnormal, normal)


@triton.jit
def fp8_decode(c, FMT: tl.constexpr):
    """float32 value of e4m3fn / e5m2 bits c (int32)."""
    if FMT == FMT_E4M3:
        M: tl.constexpr = 3
        BIAS: tl.constexpr = 7
        SUB_STEP: tl.constexpr = 0.001953125  # 2^-9
    else:
        M: tl.constexpr = 2
        BIAS: tl.constexpr = 15
        SUB_STEP: tl.constexpr = 1.52587890625e-05  # 2^-16
    mag = c & 0x7F
    e = mag >> M
    normal = ((mag + ((127 - BIAS) << M)) << (23 - M)).to(tl.float32, bitcast=True)
    v = tl.where(e == 0, (mag & ((1 << M) - 1)).to(tl.float32) * SUB_STEP, normal)
    if FMT == FMT_E4M3:
        v = tl.where(mag == 0x7F, float("nan"), v)
    else:
        v = tl.where(mag == 0x7C, float("inf"), v)
        v = tl.where(mag > 0x7C, float("nan"), v)
    return tl.where((c & 0x80) != 0, -v, v)


@triton.jit
def e2m1_encode(v, SIGNS: tl.constexpr):
    """E2M1 code (int32 0..15) of float32 v (clamped to +/-6), round to nearest even.

    SIGNS 0, torchao (MX): the sign bit is v's (-0 gives 8), NaN gives 3 with its sign.
    SIGNS 1, compressed-tensors (NVFP4): rounds |v| and multiplies by torch.sign(v), so the
    sign bit is v < 0 (-0 gives 0, -0.1 gives 8); NaN gives 0 (what its packer gives for
    the NaN of a block whose scale is NaN; a NaN's sign is no portable bit).
    SIGNS 2, ModelOpt (NVFP4): the sign bit is v < 0; NaN gives 7 (searchsorted's end).
    """
    u = v.to(tl.int32, bitcast=True)
    if SIGNS != 0:
        sign = tl.where(v < 0.0, 8, 0)
    else:
        sign = (u >> 28) & 8
    a = u & 0x7FFFFFFF
    q = magnitude_code(tl.minimum(a, 0x40C00000), 1, 1, 2.0)  # E2M1: M 1, bias 1, step 0.5
    if SIGNS == 0:
        q = tl.where(a > 0x7F800000, 3, q)
    elif SIGNS == 1:
        q = tl.where(a > 0x7F800000, 0, q)
    else:
        q = tl.where(a > 0x7F800000, 7, q)
    return q | sign


@triton.jit
def e2m1_decode(c):
    """float32 value of an E2M1 code (int32 0..15), built on the bits: magnitude m = c & 7
    is 2^(m // 2 - 1) * (1 + (m & 1) / 2) for m >= 2, whose bits are (m + 252) << 22, and
    0 or 0.5 (0x3F000000) for m = 0, 1; the sign is bit 3."""
    m = c & 7
    bits = tl.where(m > 1, (m + 252) << 22, m * 0x3F000000)
    return (bits | ((c & 8) << 28)).to(tl.float32, bitcast=True)


@triton.jit
def nf4_encode(v):
    """bitsandbytes' NF4 index of v in [-1, 1]: how many midpoints lie below v (a value on a
    midpoint takes the lower code, as torch.bucketize), found by a binary search over the
    sorted midpoints (4 comparisons); NaN gives 15."""
    b3 = v > NF4_M7
    b2 = v > tl.where(b3, NF4_M11, NF4_M3)
    b1 = v > tl.where(b3, tl.where(b2, NF4_M13, NF4_M9), tl.where(b2, NF4_M5, NF4_M1))
    t0 = tl.where(b3, tl.where(b2, tl.where(b1, NF4_M14, NF4_M12), tl.where(b1, NF4_M10, NF4_M8)),
                  tl.where(b2, tl.where(b1, NF4_M6, NF4_M4), tl.where(b1, NF4_M2, NF4_M0)))
    q = (b3.to(tl.int32) * 8 + b2.to(tl.int32) * 4 + b1.to(tl.int32) * 2
         + (v > t0).to(tl.int32))
    return tl.where(v != v, 15, q)


@triton.jit
def nf4_decode(c):
    """The NF4 codebook value of index c (int32 0..15): a tree of selects on its bits."""
    b0 = (c & 1) != 0
    b1 = (c & 2) != 0
    lo = tl.where(c >= 4, tl.where(b1, tl.where(b0, NF4_C7, NF4_C6), tl.where(b0, NF4_C5, NF4_C4)),
                  tl.where(b1, tl.where(b0, NF4_C3, NF4_C2), tl.where(b0, NF4_C1, NF4_C0)))
    hi = tl.where(c >= 12,
                  tl.where(b1, tl.where(b0, NF4_C15, NF4_C14), tl.where(b0, NF4_C13, NF4_C12)),
                  tl.where(b1, tl.where(b0, NF4_C11, NF4_C10), tl.where(b0, NF4_C9, NF4_C8)))
    return tl.where(c >= 8, hi, lo)


@triton.jit
def element_encode(v, FMT: tl.constexpr):
    """The code of v (already scaled into the element range and clamped) in format FMT."""
    if FMT == FMT_E2M1:
        return e2m1_encode(v, 0)
    elif FMT == FMT_E2M1_CT:
        return e2m1_encode(v, 1)
    elif FMT == FMT_E2M1_MO:
        return e2m1_encode(v, 2)
    elif FMT == FMT_NF4:
        return nf4_encode(v)
    else:
        return fp8_encode(v, FMT)


@triton.jit
def element_decode(c, FMT: tl.constexpr):
    """The float32 value of code c in format FMT."""
    if FMT == FMT_E2M1:
        return e2m1_decode(c)
    elif FMT == FMT_E2M1_CT:
        return e2m1_decode(c)
    elif FMT == FMT_E2M1_MO:
        return e2m1_decode(c)
    elif FMT == FMT_NF4:
        return nf4_decode(c)
    else:
        return fp8_decode(c, FMT)


@triton.jit
def clamp_fmax(v, FMT: tl.constexpr):
    """v clamped to +/-fmax, NaN kept (tl.minimum/maximum drop NaN on a GPU)."""
    c = tl.minimum(tl.maximum(v, -fmax_of(FMT)), fmax_of(FMT))
    return tl.where(v != v, v, c)


@triton.jit
def nvfp4_block_scale(amax16, gs):
    """compressed-tensors' NVFP4 block scale: e4m3 bits of clamp(gs * (amax16 / 6), +/-448),
    a zero replaced by 0.125 (0x20). Returns (bits int32, the e4m3 value float32)."""
    s = gs * tl.math.div_rn(amax16, tl.zeros_like(amax16) + 6.0)
    bits = fp8_encode(clamp_fmax(s, FMT_E4M3), FMT_E4M3)
    bits = tl.where((bits & 0x7F) == 0, 0x20, bits)
    return bits, fp8_decode(bits, FMT_E4M3)


@triton.jit
def nvfp4_global(amax):
    """compressed-tensors' global scale 448 * 6 / max(amax, tiny), as torch evaluates a scalar
    over a tensor: float32(1 / amax) * 2688 (two roundings); NaN or inf gives 1."""
    one = tl.zeros_like(amax) + 1.0
    gs = tl.math.div_rn(one, tl.maximum(amax, MIN_NORMAL)) * 2688.0
    ok = (gs == gs) & (gs != float("inf"))
    return tl.where(ok, gs, 1.0)


@triton.jit
def nvfp4_modelopt_global(amax):
    """ModelOpt's weight_scale_2 = amax / (448 * 6) (a multiplier); non-finite or zero gives 1."""
    ws2 = tl.math.div_rn(amax, tl.zeros_like(amax) + 2688.0)
    ok = (ws2 == ws2) & (ws2 != float("inf")) & (ws2 > 0.0)
    return tl.where(ok, ws2, 1.0)


@triton.jit
def nvfp4_modelopt_block_scale(amax16, ws2):
    """ModelOpt's NVFP4 block scale: e4m3 bits of clamp(amax16 / (6 * ws2), 2^-9, 448), a
    zero quotient replaced by 1 first. Returns (bits, the step: e4m3 value * ws2)."""
    s = tl.math.div_rn(amax16, (tl.zeros_like(amax16) + 6.0) * ws2)
    s = tl.where(s == 0.0, 1.0, s)
    s = tl.where(s != s, s, tl.minimum(tl.maximum(s, MIN_E4M3_SUB), 448.0))
    bits = fp8_encode(s, FMT_E4M3)
    return bits, fp8_decode(bits, FMT_E4M3) * ws2
