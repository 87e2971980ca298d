"""Element and scale codecs of the float formats, in NumPy, written from the format specs.

Mini-floats (sign, ``ebits`` exponent bits of bias ``2^(ebits-1)-1``, ``mbits``
mantissa bits, subnormals): FP8 E4M3fn (max 448, no Inf, NaN = S.1111.111),
FP8 E5M2 (max 57344, IEEE-like Inf/NaN), FP4 E2M1 (0, 0.5, 1, 1.5, 2, 3, 4, 6; no
Inf/NaN). Encoding rounds to nearest, ties to even (RNE), from the exact value of
the float32 input. E8M0 scales (OCP MX): ``2^(e-127)``, 255 = NaN, with the FLOOR,
RCEIL and EVEN rules. NF4: bitsandbytes' 16-entry codebook, nearest entry, a value
on a midpoint taking the lower code; its double quantization's 8-bit dynamic map
(create_dynamic_map) and CPU encoder. docs/ARCHITECTURE.md states the contract.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

__all__ = ["MiniFloat", "E4M3", "E5M2", "E2M1", "MINIFLOATS", "encode", "decode",
           "pack_low_first", "unpack_low_first", "pack_high_first", "unpack_high_first",
           "e8m0_from_amax", "decode_e8m0", "NF4_CODEBOOK", "NF4_ZERO_CODE", "nf4_encode", "nf4_decode",
           "DYNAMIC_MAP", "DYNAMIC_LUT", "dynamic_encode"]


@dataclasses.dataclass(frozen=True)
class MiniFloat:
    name: str
    ebits: int
    mbits: int
    max: float
    inf_code: int | None   # positive Inf's code, None when the format has no Inf
    nan_code: int | None   # the positive NaN code written for NaN, None when no NaN

    @property
    def bias(self) -> int:
        return (1 << (self.ebits - 1)) - 1

    @property
    def sign_bit(self) -> int:
        return 1 << (self.ebits + self.mbits)

    @property
    def emax(self) -> int:
        """floor(log2(max)): the exponent of the largest power of two (OCP emax_elem)."""
        return int(np.floor(np.log2(self.max)))


# NaN codes: torch's casts (e4m3fn S.1111.111; e5m2 S.11111.11).
E4M3 = MiniFloat("fp8_e4m3", 4, 3, 448.0, None, 0x7F)
E5M2 = MiniFloat("fp8_e5m2", 5, 2, 57344.0, 0x7C, 0x7F)
E2M1 = MiniFloat("fp4_e2m1", 2, 1, 6.0, None, None)
E2M1_NAN_CODE = 3  # torchao's _f32_to_floatx_unpacked of the quiet NaN 0x7FC00000
MINIFLOATS = {f.name: f for f in (E4M3, E5M2, E2M1)}


def _value(fmt: MiniFloat, code: int) -> float:
    """The value of a positive code (no sign bit), from the bit fields."""
    exp, man = code >> fmt.mbits, code & ((1 << fmt.mbits) - 1)
    if exp == 0:
        return man * 2.0 ** (1 - fmt.bias - fmt.mbits)
    return (1 + man / (1 << fmt.mbits)) * 2.0 ** (exp - fmt.bias)


@functools.cache
def _grid(fmt: MiniFloat) -> np.ndarray:
    """float64 values of the finite positive codes 0 .. code(max), increasing with the code."""
    values = []
    for code in range(fmt.sign_bit):
        v = _value(fmt, code)
        if v > fmt.max:
            break
        values.append(v)
    return np.array(values, np.float64)


@functools.cache
def _table(fmt: MiniFloat) -> np.ndarray:
    """float32 value of every code, the sign bit included (NaN and Inf codes too)."""
    grid = _grid(fmt)
    pos = np.full(fmt.sign_bit, np.nan)
    pos[: grid.size] = grid
    if fmt.inf_code is not None:
        pos[fmt.inf_code] = np.inf
    table = np.concatenate([pos, -pos]).astype(np.float32)
    table.setflags(write=False)
    return table


def encode(x: np.ndarray, fmt: MiniFloat, saturate: bool = True) -> np.ndarray:
    """uint8 codes of float32 ``x`` rounded to nearest even in ``fmt``.

    A finite value that rounds past the largest finite value saturates to it when
    ``saturate`` (so does Inf); otherwise it becomes Inf (E5M2) or NaN (E4M3fn), as
    ml_dtypes' casts do. NaN gives the format's NaN code with NaN's sign bit; E2M1,
    having no NaN, gives code 3 (1.0) with NaN's sign bit, what torchao's bit-level cast
    makes of a quiet NaN (a NaN block's scale carries the NaN).
    """
    x = np.asarray(x, np.float32)
    sign = np.where(np.signbit(x), fmt.sign_bit, 0).astype(np.uint8)
    mag = np.abs(x).astype(np.float64)
    finite = np.isfinite(mag)
    m = np.where(finite, mag, 0.0)
    exp = np.maximum(np.frexp(m)[1] - 1, 1 - fmt.bias)   # floor(log2 m), at least emin
    quantum = np.ldexp(1.0, exp - fmt.mbits)
    rounded = np.rint(m / quantum) * quantum              # exact: quantum is a power of two
    grid = _grid(fmt)
    top = grid.size - 1
    code = np.searchsorted(grid, np.minimum(rounded, grid[-1])).astype(np.uint8)
    over = (rounded > grid[-1]) | (np.isinf(mag))
    if saturate or (fmt.inf_code is None and fmt.nan_code is None):
        overflow_code = top
    else:
        overflow_code = fmt.inf_code if fmt.inf_code is not None else fmt.nan_code
    code = np.where(over, overflow_code, code)
    nan_code = fmt.nan_code if fmt.nan_code is not None else E2M1_NAN_CODE
    code = np.where(np.isnan(mag), nan_code, code)
    return (code.astype(np.uint8) | sign).astype(np.uint8)


def decode(codes: np.ndarray, fmt: MiniFloat) -> np.ndarray:
    """float32 values of ``fmt`` codes (any integer array; the low 1+e+m bits are read)."""
    table = _table(fmt)
    return table[np.asarray(codes).astype(np.intp) & (table.size - 1)]


# ----------------------------------------------------------------- nibbles
def pack_low_first(codes: np.ndarray) -> np.ndarray:
    """4-bit codes packed along the last axis, element 2i in the low nibble of byte i
    (OCP / torchao / compressed-tensors); an odd row gets a zero high nibble."""
    codes = np.asarray(codes, np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    return (codes[..., 0::2] & 0xF) | ((codes[..., 1::2] & 0xF) << 4)


def unpack_low_first(packed: np.ndarray, cols: int) -> np.ndarray:
    """The ``cols`` 4-bit codes of each row of :func:`pack_low_first`'s bytes."""
    packed = np.asarray(packed, np.uint8)
    out = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return out[..., :cols]


def pack_high_first(codes: np.ndarray, pad: int = 0) -> np.ndarray:
    """bitsandbytes' packing of a flat code array: element 2i in the HIGH nibble; an odd
    count gets ``pad`` as its last low nibble (NF4: 7, the code of 0.0, as bitsandbytes)."""
    flat = np.asarray(codes, np.uint8).reshape(-1)
    if flat.size % 2:
        flat = np.concatenate([flat, np.full(1, pad, np.uint8)])
    return ((flat[0::2] & 0xF) << 4) | (flat[1::2] & 0xF)


def unpack_high_first(packed: np.ndarray, numel: int) -> np.ndarray:
    packed = np.asarray(packed, np.uint8).reshape(-1)
    return np.stack([packed >> 4, packed & 0xF], axis=-1).reshape(-1)[:numel]


# ------------------------------------------------------------------- E8M0
def _float_bits(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(biased exponent field, mantissa field) of float32 values as int64."""
    bits = np.asarray(a, np.float32).view(np.uint32).astype(np.int64)
    return (bits >> 23) & 0xFF, bits & 0x7FFFFF


def e8m0_from_amax(amax: np.ndarray, rule: str, fmt: MiniFloat) -> np.ndarray:
    """uint8 E8M0 block scales of float32 block amaxes under ``rule``.

    floor: ``floor(log2 amax) - emax_elem`` (OCP MX 1.0); rceil: ``ceil(log2(amax /
    max_elem))`` with the division in float32 (NVIDIA's recipe, cvt.rp to UE8M0);
    even: amax's mantissa first rounded to the element's mantissa width (ties away),
    then the floor rule. Exponents are clamped to [-127, 127] (rceil: saturated to
    254 as cvt.rp.satfinite), a zero amax gives 0 (2^-127), a NaN amax 255 (NaN); an
    Inf amax reads as 2^128 under floor/even (255 - emax, as torchao; the OCP text would
    say NaN) and gives 254 under rceil.
    """
    amax = np.abs(np.asarray(amax, np.float32))
    if rule == "rceil":
        with np.errstate(over="ignore"):
            descale = (amax / np.float32(fmt.max)).astype(np.float32)
        exp, man = _float_bits(descale)
        # ceil(log2 d) + 127: a subnormal d is above 2^-127 iff its mantissa is above 2^22
        biased = np.where(exp == 0, (man > 0x400000).astype(np.int64), exp + (man != 0))
        biased = np.minimum(biased, 254)
        return np.where(np.isnan(amax), 255, biased).astype(np.uint8)
    if rule == "even":
        bits = amax.view(np.uint32).astype(np.int64)
        bits = (bits + (1 << (22 - fmt.mbits))) & 0x7F800000
        return _floor_rule(bits, amax, fmt)
    if rule == "floor":
        return _floor_rule(amax.view(np.uint32).astype(np.int64), amax, fmt)
    raise ValueError(f"scale_rule={rule!r}; accepted: 'floor', 'rceil', 'even'")


def _floor_rule(bits: np.ndarray, amax: np.ndarray, fmt: MiniFloat) -> np.ndarray:
    """E8M0 of the float32 bit patterns ``bits`` (amax, or amax rounded by the even rule:
    a finite amax may round up to 2^128, exponent field 255, still a finite scale)."""
    exp = (bits >> 23) & 0xFF
    # floor(log2 v) = exp - 127 for a normal v; a subnormal or zero v clamps to -127 anyway;
    # Inf (exponent field 255) reads as 2^128, as torchao does
    unbiased = np.clip(exp - 127 - fmt.emax, -127, 127)
    biased = np.where(np.isnan(amax), 255, unbiased + 127)
    return biased.astype(np.uint8)


def decode_e8m0(scale: np.ndarray) -> np.ndarray:
    """float32 ``2^(e-127)`` of E8M0 bytes; 255 is NaN, 0 is 2^-127 (a subnormal)."""
    e = np.asarray(scale).astype(np.int64)
    return np.where(e == 255, np.nan, np.ldexp(1.0, e - 127)).astype(np.float32)


# -------------------------------------------------------------------- NF4
NF4_CODEBOOK = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], np.float32)
NF4_CODEBOOK.setflags(write=False)
NF4_ZERO_CODE = 7
# midpoints of neighbouring entries, computed in float32 as bitsandbytes does
_NF4_MIDPOINTS = ((NF4_CODEBOOK[:-1] + NF4_CODEBOOK[1:]) / np.float32(2)).astype(np.float32)


def nf4_encode(scaled: np.ndarray) -> np.ndarray:
    """uint8 NF4 codes of float32 values in [-1, 1]: the nearest entry, a value equal to
    a midpoint taking the lower code; NaN takes code 15 (above every midpoint)."""
    return np.searchsorted(_NF4_MIDPOINTS, np.asarray(scaled, np.float32), side="left").astype(np.uint8)


def nf4_decode(codes: np.ndarray) -> np.ndarray:
    return NF4_CODEBOOK[np.asarray(codes).astype(np.intp) & 0xF]


# ---------------------------------------------------- the 8-bit dynamic map
def _linspace(k: int) -> np.ndarray:
    """torch.linspace(0.1, 1, k) in float32: step = (1 - 0.1) / (k - 1) in float32, then
    0.1 + step * i for the first k // 2 points and 1 - step * (k - 1 - i) for the rest, each
    rounded once (torch's CPU kernel, contracted): exact in float64, then rounded."""
    start, end = np.float32(0.1), np.float32(1.0)
    step = np.float64(np.float32(np.float32(end - start) / np.float32(k - 1)))
    i = np.arange(k, dtype=np.float64)
    return np.where(i < k // 2, np.float64(start) + step * i,
                    np.float64(end) - step * (k - 1 - i)).astype(np.float32)


def _dynamic_map() -> np.ndarray:
    """bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for
    i = 0..6, the float32 midpoints of linspace(0.1, 1, 2^i + 1) times float32(10^(i-6)), with
    both signs; then 0 and 1; sorted (256 entries, -0.99297 .. 1)."""
    values = [np.float32(0.0), np.float32(1.0)]
    for i in range(7):
        b = _linspace(2 ** i + 1)
        means = ((b[:-1] + b[1:]) / np.float32(2)).astype(np.float32)
        scaled = (np.float32(10.0 ** (i - 6)) * means).astype(np.float32)
        values += [*scaled, *(-scaled)]
    return np.sort(np.array(values, np.float32))


DYNAMIC_MAP = _dynamic_map()
DYNAMIC_MAP.setflags(write=False)
# bitsandbytes' CPU quantizer: 65536 bins of [-1, 1], bin i at -1 + 2i / 65535 (float32), coded
# with the number of map midpoints (0.5 * (a + b), float32) below it
_DYN_MID = (np.float32(0.5) * (DYNAMIC_MAP[:-1] + DYNAMIC_MAP[1:])).astype(np.float32)
_BIN = (np.float32(-1.0) + (np.float32(2.0) * np.arange(65536, dtype=np.float32)
                            / np.float32(65535)).astype(np.float32)).astype(np.float32)
DYNAMIC_LUT = np.searchsorted(_DYN_MID, _BIN, side="left").astype(np.uint8)
DYNAMIC_LUT.setflags(write=False)


def dynamic_encode(v: np.ndarray) -> np.ndarray:
    """uint8 dynamic-map codes of float32 v (already divided by the block absmax), as
    bitsandbytes' CPU kernel: v clamped to [-1, 1], bin = trunc(fma((v + 1) * 0.5, 65535, 0.5))
    (exact in float64, one rounding to float32), code = DYNAMIC_LUT[bin]; NaN: bin 0."""
    v = np.clip(np.asarray(v, np.float32), np.float32(-1.0), np.float32(1.0))
    t = ((v + np.float32(1.0)).astype(np.float32) * np.float32(0.5)).astype(np.float32)
    f = (t.astype(np.float64) * 65535.0 + 0.5).astype(np.float32)
    return DYNAMIC_LUT[np.where(np.isnan(f), np.float32(0.0), f).astype(np.int64)]
