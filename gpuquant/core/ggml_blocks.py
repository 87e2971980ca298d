"""GGUF Q8_0, Q4_0 and MXFP4 blocks in NumPy, byte for byte the bytes of ``gguf.quants.quantize``.

A block is 32 consecutive values of a row (the row length must be a multiple
of 32) stored as a scale followed by the codes; Q8_0 and Q4_0 have a float16
scale ``d``:

- Q8_0 (34 bytes): ``d = amax / 127``; ``q = round_half_away(x * (1 / d))``
  as int8.
- Q4_0 (18 bytes): ``m`` = the value of largest magnitude (the first one on
  a tie), ``d = m / -8``; ``q = clamp(trunc(x * (1 / d) + 8.5), 0, 15)``;
  byte j holds q[j] in its low nibble and q[j + 16] in its high nibble.
- MXFP4 (17 bytes): an E8M0 byte, then E2M1 nibbles in Q4_0's order; see
  :func:`_mxfp4` for where ggml's rule differs from OCP MX (formats/codecs.py).

Every step is one float32 operation, as in gguf-py (and ggml-quants.c):
the codes use the float32 ``d``, the file stores it rounded to float16. An
all-zero block has ``1 / d`` replaced by 0. The work runs in cache-sized
pieces on all cores (gpuquant.core.blocks), which is what makes it faster than
gguf-py's whole-array passes.
"""

from __future__ import annotations

import threading

import numpy as np

from ..errors import InvalidShapeError, NonFiniteError
from .blocks import run_blocks
from .frameworks import bf16_bits_to_f32

__all__ = ["BLOCK", "SCHEMES", "quantize_blocks", "block_bytes", "mxfp4_exponent"]

BLOCK = 32
SCHEMES = {"q8_0": 34, "q4_0": 18, "mxfp4": 17}  # bytes per block
# 0.5 - 2^-25, the float32 just below 0.5. For float32 0 <= v < 2^22, trunc(v + _HALF_DOWN)
# (one float32 add) is round-half-away-from-zero: a tie n - 0.5 sums to n - 2^-25, which
# rounds up to n, and the largest v below a tie sums to below n. Adding 0.5 instead would
# send v = 0.49999997 to 1.0.
_HALF_DOWN = np.float32(0.49999997)
_F32 = np.float32
_F16_LIMIT = np.float32(65520)  # the smallest float32 that rounds to float16 inf
_SIGN = np.uint32(0x80000000)
_CHUNK = 1 << 19  # values a piece: 2 MiB of float32; fewer NumPy calls beat cache (measured)
_local = threading.local()


def block_bytes(scheme: str) -> int:
    if scheme not in SCHEMES:
        raise InvalidShapeError(f"scheme={scheme!r}; accepted: " + ", ".join(SCHEMES))
    return SCHEMES[scheme]


def _reciprocal(d: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", over="ignore"):
        inv = _F32(1) / d
    inv[d == 0] = 0
    return inv


def _check_scale(d: np.ndarray, name: str) -> None:
    """Refuse a scale that float16 cannot hold (gguf-py would store inf)."""
    big = np.abs(d) >= _F16_LIMIT
    if big.any():
        limit = 127 if name == "Q8_0" else 8
        raise InvalidShapeError(
            f"{int(big.sum())} block(s) need a scale of {float(np.abs(d[big]).max()):.4g}, above "
            f"float16's 65504: {name} holds |x| up to about {limit * 65504:.4g}; keep this tensor "
            "unquantized")


def _scratch(m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """This thread's buffers for m blocks: float32 (m, 32) twice, uint32 (m, 32), uint8
    (m, 32). Reused: a fresh 1 MiB temporary costs NumPy page faults every time."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None or bufs[0].shape[0] < m:
        bufs = (np.empty((m, BLOCK), np.float32), np.empty((m, BLOCK), np.float32),
                np.empty((m, BLOCK), np.uint32), np.empty((m, BLOCK), np.uint8))
        _local.bufs = bufs
    return tuple(b[:m] for b in bufs)


def _reduce_blocks(blocks: np.ndarray, ufunc, buf: np.ndarray) -> np.ndarray:
    """``ufunc`` (np.maximum or np.minimum) over each row of 32 (float: NaN propagates).

    Five halvings of the flat array, each a long loop over pairs 8 bytes apart
    (NumPy reduces a short inner axis, ``max(axis=1)``, about 4x slower).
    ``buf`` (of the blocks' dtype) holds at least 16 values a block.
    """
    flat = blocks.reshape(-1)
    n = flat.size // 2
    out = ufunc(flat[0::2], flat[1::2], out=buf.reshape(-1)[:n])
    while n > blocks.shape[0]:
        ufunc(out[0:n:2], out[1:n:2], out=out[: n // 2])  # NumPy buffers the overlap
        n //= 2
    return out[:n]


def _store_scale(d: np.ndarray, out: np.ndarray) -> None:
    np.copyto(out[:, :2], d.astype(np.float16).view(np.uint8).reshape(-1, 2))


def _q8_0(xb: np.ndarray, out: np.ndarray) -> int:
    a, _, sign, _ = _scratch(xb.shape[0])  # the second float32 buffer may hold xb
    np.abs(xb, out=a)
    # |x| >= 0 orders like its int32 bits (faster to compare), NaN's bits above Inf's
    amax = _reduce_blocks(a.view(np.int32), np.maximum, sign.view(np.int32)).view(np.float32)
    d = amax / _F32(127)  # NaN or Inf for a block holding one
    if not np.isfinite(d).all():
        return int(np.count_nonzero(~np.isfinite(d)))
    _check_scale(d, "Q8_0")
    np.multiply(a, _reciprocal(d)[:, None], out=a)  # |x * id|: the same rounding
    a += _HALF_DOWN
    np.bitwise_and(xb.view(np.uint32), _SIGN, out=sign)
    np.bitwise_or(a.view(np.uint32), sign, out=a.view(np.uint32))  # copysign: a >= 0
    np.copyto(out[:, 2:].view(np.int8), a, casting="unsafe")  # the cast truncates
    _store_scale(d, out)
    return 0


def _signed_max(xb: np.ndarray, buf_hi: np.ndarray, buf_lo: np.ndarray) -> np.ndarray:
    """The value of largest magnitude per block, the first one where +m and -m tie
    (gguf-py's argmax of |x|)."""
    hi = _reduce_blocks(xb, np.maximum, buf_hi)
    lo = _reduce_blocks(xb, np.minimum, buf_lo)
    m = np.where(hi >= -lo, hi, lo)  # a NaN compares false: lo, which is NaN too
    tied = np.flatnonzero(hi == -lo)  # +m and -m, or all zeros (whose sign gguf-py keeps)
    if tied.size:
        first = np.abs(xb[tied]).argmax(axis=1)
        m[tied] = xb[tied, first]
    return m


def _q4_0(xb: np.ndarray, out: np.ndarray) -> int:
    v, _, bits, q = _scratch(xb.shape[0])  # the second float32 buffer may hold xb
    d = _signed_max(xb, v, bits.view(np.float32)) / _F32(-8)
    if not np.isfinite(d).all():
        return int(np.count_nonzero(~np.isfinite(d)))
    _check_scale(d, "Q4_0")
    np.multiply(xb, _reciprocal(d)[:, None], out=v)
    v += _F32(8.5)
    np.copyto(q, v, casting="unsafe")  # v >= 0 here: the cast truncates
    np.minimum(q, 15, out=q)
    u = q.view(np.uint64)  # 8 codes a word: a 4-bit shift carries no bit across bytes
    np.copyto(out[:, 2:], (u[:, :2] | (u[:, 2:] << np.uint64(4))).view(np.uint8))
    _store_scale(d, out)
    return 0


def _pow2(k: np.ndarray) -> np.ndarray:
    """float32 2^k of integers -126 <= k <= 127, from the exponent bits."""
    return ((k + 127) << 23).astype(np.uint32).view(np.float32)


def mxfp4_exponent(amax: np.ndarray) -> np.ndarray:
    """ggml's E8M0 byte of float32 block amaxes: ``floor(log2(amax)) - 2 + 127`` with
    ``log2`` in float32, as gguf-py (and ggml's ``log2f``); 0 for a zero amax.

    The OCP floor rule of formats/codecs.py with two differences: the float32 ``log2``
    rounds an amax just below 2^k up to k (so such a block takes the next exponent), and
    an amax below 2^-125 is not clamped to 0: its negative exponent wraps modulo 256, as
    the float -> uint8 cast of gguf-py and ggml does on x86 (a scale of 2^103 or more,
    so the whole block stores code 0).
    """
    amax = np.asarray(amax, np.float32)
    lg = np.floor(np.log2(np.where(amax > 0, amax, _F32(1))))
    return np.where(amax > 0, lg.astype(np.int64) + 125, 0) & 0xFF


def _mxfp4(xb: np.ndarray, out: np.ndarray) -> int:
    """gguf-py's MXFP4: d = 2^(e-128) (half the E8M0 scale), each x takes the nearest of
    d * (0, 1, 2, 3, 4, 6, 8, 12) (twice the E2M1 values), the first one on a tie.

    Where ggml differs from OCP MX's E2M1 (codecs.encode, round half to even): ties go
    toward zero (0.75 -> 0.5, 1.75 -> 1.5, 3.5 -> 3, where RNE goes up), and a value
    that rounds to zero stores +0 (code 0, never 8). With t = |x| / d: the magnitude
    code is ``min(ceil(t - 0.5), 4) + (t > 5) + (t > 7) + (t > 10)`` (t - 0.5 is exact
    for t >= 1/4). The exponent 253 (an amax within float32 rounding of 2^128) makes
    8d and 12d overflow to inf, which gguf-py never picks: its codes stop at 6d.
    """
    a, _, bits, q = _scratch(xb.shape[0])  # the second float32 buffer may hold xb
    np.abs(xb, out=a)
    amax = _reduce_blocks(a.view(np.int32), np.maximum, bits.view(np.int32)).view(np.float32)
    if not np.isfinite(amax).all():  # NaN and Inf, whose bits are the largest
        return int(np.count_nonzero(~np.isfinite(amax)))
    e = mxfp4_exponent(amax)
    shift = 128 - e  # t = |x| * 2^shift, in two exact steps (2^128 is no float32)
    a *= _pow2(shift // 2)[:, None]
    a *= _pow2(shift - shift // 2)[:, None]
    f = bits.view(np.float32)
    np.subtract(a, _F32(0.5), out=f)
    np.ceil(f, out=f)
    np.minimum(f, _F32(4), out=f)
    np.copyto(q, f, casting="unsafe")  # 0..4 (-0.0 casts to 0)
    for above in (5, 7, 10):
        q += a > _F32(above)
    top = np.flatnonzero(e == 253)
    if top.size:
        q[top] = np.minimum(q[top], 5)
    np.bitwise_or(q, 8, out=q, where=(xb < 0) & (q != 0))
    u = q.view(np.uint64)  # 8 codes a word: a 4-bit shift carries no bit across bytes
    np.copyto(out[:, 1:], (u[:, :2] | (u[:, 2:] << np.uint64(4))).view(np.uint8))
    out[:, 0] = e
    return 0


_KERNELS = {"q8_0": _q8_0, "q4_0": _q4_0, "mxfp4": _mxfp4}


def quantize_blocks(x: np.ndarray, scheme: str, bf16_bits: bool = False) -> np.ndarray:
    """Quantize a float array whose last dimension is a multiple of 32.

    Returns uint8 of shape ``(*x.shape[:-1], x.shape[-1] // 32 * bytes)``:
    the layout gguf-py's ``quantize`` returns and ``GGUFWriter`` stores.
    NaN or Inf raises :class:`NonFiniteError` (gguf-py would write garbage).
    float16 input, and bfloat16 bit patterns (uint16, ``bf16_bits=True``),
    are widened to float32 a cache-sized piece at a time.
    """
    size = block_bytes(scheme)
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] % BLOCK:
        raise InvalidShapeError(f"GGUF {scheme.upper()} needs a last dimension that is a "
                                f"multiple of {BLOCK}, got shape {x.shape}")
    if x.dtype not in (np.float16, np.float32) and not bf16_bits:
        x = x.astype(np.float32)
    blocks = np.ascontiguousarray(x).reshape(-1, BLOCK)
    out = np.empty((blocks.shape[0], size), np.uint8)
    kernel = _KERNELS[scheme]

    def widen(part: np.ndarray) -> np.ndarray:
        if part.dtype == np.float32:
            return part
        wide = _scratch(part.shape[0])[1]
        if bf16_bits:
            np.left_shift(part.view(np.uint16), 16, out=wide.view(np.uint32), dtype=np.uint32)
        else:
            np.copyto(wide, part)
        return wide

    def one(span):
        r0, r1, _, _ = span
        return kernel(widen(blocks[r0:r1]), out[r0:r1])

    if sum(run_blocks(one, blocks.shape[0], BLOCK, target=_CHUNK)):
        wide = bf16_bits_to_f32(blocks) if bf16_bits else blocks.astype(np.float32)
        raise NonFiniteError(nonfinite_blocks(wide, x.shape))
    return out.reshape(*x.shape[:-1], x.shape[-1] // BLOCK * size)


def nonfinite_blocks(blocks: np.ndarray, shape) -> str:
    """The NonFiniteError message: how many values, and the first block holding one."""
    bad = ~np.isfinite(blocks)
    first = int(np.flatnonzero(bad.any(axis=1))[0])
    return (f"x of shape {tuple(shape)} has {int(bad.sum())} non-finite value(s) (NaN or Inf); "
            f"the first is in block {first} ({BLOCK} values a block). GGUF blocks need "
            "finite values: clean the data first")
