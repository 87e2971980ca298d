"""The NumPy reference of the float formats (docs/ARCHITECTURE.md, "Float formats").

``quantize_float(x32, cfg) -> (codes, scale, global_scale | None)`` and
``dequantize_float(codes, scale, global_scale, cfg, shape) -> float32`` on a
float32 array, in the storage layout every backend shares:

- FP8 (float32 scales): codes uint8 of x's shape; scale () per tensor, (C,) per
  channel, x.shape[:-1] per token, (..., ceil(K/G)) per group, (ceil(N/bn),
  ceil(K/bk)) per 2-D block. ``s = amax / fmax`` (a zero s becomes float32 eps),
  codes = RNE(clamp(x / s, -fmax, fmax)).
- MX (E8M0 scales, FP8 or E2M1 elements): scale uint8 (..., ceil(K/G)); elements
  RNE(clamp(x / 2^(e-127), -max, max)); E2M1 packed two per byte, even element low.
- NVFP4 (E4M3 scales): compressed-tensors' formula with a float32 global scale
  ``gs = 448*6/amax`` (or ModelOpt's ``amax/(448*6)`` multiplier).
- NF4: bitsandbytes' blockwise absmax over the flattened tensor, high nibble first; with
  ``double_quant`` the absmax minus their mean coded in 8 bits per 256 (compress_statistics).
A ragged last group/block holds only the real elements (zero padding).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import EmptyTensorError, InvalidShapeError
from . import codecs

__all__ = ["quantize_float", "dequantize_float", "unit_shape", "codes_shape", "fp8_scale",
           "fp8_codes", "nested_shape", "nested_mean", "nest_absmax", "unnest_absmax",
           "fp8_dynamic", "NESTED_BLOCK", "MEAN_ROW", "VLLM_TOKEN_FLOOR", "VLLM_GROUP_EPS"]

F32 = np.float32
F32_ZERO = np.float32(0.0)
_F32_EPS = np.float32(np.finfo(np.float32).eps)
_F32_TINY = np.float32(np.finfo(np.float32).tiny)
_NVFP4_MAX = np.float32(448.0 * 6.0)
_NVFP4_ZERO_SCALE = np.float32(0.125)  # compressed-tensors' eps for an e4m3 scale
_NF4_MIN_ABSMAX = np.float32(1e-38)    # bitsandbytes' clamp (a float32 subnormal)
NESTED_BLOCK = 256  # bitsandbytes' block of the double-quantized absmax (compress_statistics)
MEAN_ROW = 1024     # the rows of the offset's float64 sum (nested_mean)
VLLM_TOKEN_FLOOR = np.float32(1.0) / np.float32(448 * 512)  # vLLM's per-token scale floor
VLLM_GROUP_EPS = np.float32(1e-10)  # vLLM's per-token-group amax floor


def _element(cfg) -> codecs.MiniFloat:
    return codecs.MINIFLOATS[cfg.element]


def _groups(cols: int, size: int) -> int:
    return -(-cols // size)


def _shape2(shape: tuple[int, ...], cfg) -> tuple[int, ...]:
    """The shape computed on: a 0-d tensor is (1,) under per-group formats."""
    gran = str(cfg.granularity)
    if len(shape) == 0 and gran in ("channel", "block"):
        raise InvalidShapeError(f"granularity={gran!r} needs a tensor of at least "
                                f"{2 if gran == 'block' else 1} dimension(s); got a 0-d tensor")
    if gran == "block" and len(shape) != 2:
        raise InvalidShapeError(f"granularity='block' (block_shape={cfg.block_shape}) needs a 2-D "
                                f"tensor; got shape {shape}")
    if gran == "channel" and not -len(shape) <= cfg.axis < len(shape):
        raise InvalidShapeError(f"axis={cfg.axis} is out of range for a tensor of shape {shape}")
    return (1,) if len(shape) == 0 and gran == "group" else shape


def unit_shape(shape: tuple[int, ...], cfg) -> tuple[int, ...]:
    """Shape of ``scale`` for a tensor of ``shape`` under the float config ``cfg``."""
    if cfg.element == "nf4":
        return (_groups(max(1, math.prod(shape)), cfg.group_size),)
    shape = _shape2(tuple(shape), cfg)
    gran = str(cfg.granularity)
    if gran == "tensor":
        return ()
    if gran == "channel":
        return (shape[cfg.axis],)
    if gran == "token":
        return shape[:-1]
    if gran == "block":
        (bn, bk), (n, k) = cfg.block_shape, shape
        return (_groups(n, bn), _groups(k, bk))
    return (*shape[:-1], _groups(shape[-1], cfg.group_size))


def codes_shape(shape: tuple[int, ...], cfg) -> tuple[int, ...]:
    """Shape of the stored codes: x's shape for FP8, (..., ceil(K/2)) for E2M1,
    (ceil(numel/2),) for NF4."""
    shape = tuple(shape)
    if cfg.element == "nf4":
        return ((max(1, math.prod(shape)) + 1) // 2,)
    if cfg.element == "fp4_e2m1":
        shape = _shape2(shape, cfg)
        return (*shape[:-1], (shape[-1] + 1) // 2)
    return shape


# ------------------------------------------------------------ per-unit amax
def _unit_amax(a: np.ndarray, cfg) -> np.ndarray:
    """float32 max |x| of each unit (NaN when the unit holds a NaN); ``a`` is |x|."""
    gran = str(cfg.granularity)
    if gran == "tensor":
        return np.max(a).astype(np.float32)
    if gran == "channel":
        axis = cfg.axis % a.ndim
        return np.max(np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1), axis=1)
    if gran == "token":
        return np.max(a, axis=-1)
    if gran == "block":
        (bn, bk), (n, k) = cfg.block_shape, a.shape
        pad = np.zeros((_groups(n, bn) * bn, _groups(k, bk) * bk), np.float32)
        pad[:n, :k] = a
        return pad.reshape(pad.shape[0] // bn, bn, pad.shape[1] // bk, bk).max(axis=(1, 3))
    size = cfg.group_size
    k = a.shape[-1]
    pad = np.zeros((*a.shape[:-1], _groups(k, size) * size), np.float32)
    pad[..., :k] = a
    return pad.reshape(*a.shape[:-1], -1, size).max(axis=-1)


def _expand(s: np.ndarray, shape: tuple[int, ...], cfg) -> np.ndarray:
    """Per-unit values broadcast to one per element of ``shape``."""
    gran = str(cfg.granularity)
    if gran == "tensor":
        return s
    if gran == "channel":
        axis = cfg.axis % len(shape)
        return s.reshape([-1 if d == axis else 1 for d in range(len(shape))])
    if gran == "token":
        return s[..., None]
    if gran == "block":
        (bn, bk), (n, k) = cfg.block_shape, shape
        return np.repeat(np.repeat(s, bn, axis=0), bk, axis=1)[:n, :k]
    return np.repeat(s, cfg.group_size, axis=-1)[..., : shape[-1]]


# ------------------------------------------------------------------ quantize
def quantize_float(x32: np.ndarray, cfg):
    """(codes, scale, global_scale | None) of a float32 array under the float ``cfg``."""
    x = np.asarray(x32, np.float32)
    if x.size == 0:
        raise EmptyTensorError(f"x is empty (shape {x.shape}); quantization needs values")
    if cfg.element == "nf4":
        codes, absmax = _nf4(x, cfg.group_size)
        if getattr(cfg, "double_quant", False):
            q, nested, offset = nest_absmax(absmax)
            return codes, q, (nested, offset)
        return codes, absmax, None
    x2 = x.reshape(_shape2(x.shape, cfg))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if cfg.scale_format == "e4m3":
            return _nvfp4(x2, cfg)
        amax = _unit_amax(np.abs(x2), cfg)
        if cfg.scale_format == "e8m0":
            fmt = _element(cfg)
            scale = codecs.e8m0_from_amax(amax, cfg.scale_rule, fmt)
            codes = _encode(_mx_scaled(x2, _expand(scale, x2.shape, cfg), cfg.scale_rule), fmt)
            return codes.reshape(codes_shape(x.shape, cfg)), scale, None
        scale = fp8_scale(amax, cfg)
        return fp8_codes(x, scale, cfg), scale, None


def fp8_scale(amax: np.ndarray, cfg) -> np.ndarray:
    """float32 FP8 scales ``amax / fmax`` of per-unit amaxes; a zero scale becomes float32 eps."""
    scale = (np.asarray(amax, np.float32) / np.float32(_element(cfg).max)).astype(np.float32)
    return np.where(scale == 0, _F32_EPS, scale).astype(np.float32)


def fp8_codes(x32: np.ndarray, scale: np.ndarray, cfg) -> np.ndarray:
    """FP8 codes ``RNE(clamp(x / s, -fmax, fmax))`` of x for given per-unit float32 scales
    (static scales from a Calibrator, or the ones quantize_float computes)."""
    x = np.asarray(x32, np.float32)
    x2 = x.reshape(_shape2(x.shape, cfg))
    scale = np.asarray(scale, np.float32)
    if scale.shape != unit_shape(x.shape, cfg):
        raise InvalidShapeError(f"scale has shape {scale.shape}; shape {x.shape} under "
                                f"{cfg.describe()} needs {unit_shape(x.shape, cfg)}")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _encode(x2 / _expand(scale, x2.shape, cfg), _element(cfg)).reshape(x.shape)


def fp8_dynamic(x32: np.ndarray, cfg) -> tuple[np.ndarray, np.ndarray]:
    """vLLM's dynamic FP8 e4m3 activations: (codes, scale) of x under ``cfg`` (fp8_e4m3 per
    token, or per group of ``group_size`` along the last axis). Per token (vLLM's
    dynamic_per_token_scaled_fp8_quant) ``s = max(amax / 448, 1 / (448 * 512))``; per group
    (per_token_group_quant_fp8) ``s = max(amax, 1e-10) / 448``; codes
    ``RNE(clamp(x / s, -448, 448))`` with a true division, as fp8_codes. Bits equal
    quantize_float's wherever amax / 448 >= the token floor (amax >= 1 / 512) or amax >= 1e-10
    (group); below, quantize_float's s is amax / 448 (0: float32 eps). A unit holding a NaN
    gets the floor (its finite values saturate to +-448, the NaN codes NaN; vLLM's CUDA
    kernel leaves NaN out of amax instead); an Inf gives an Inf scale, as quantize_float."""
    x = np.asarray(x32, np.float32)
    if x.size == 0:
        raise EmptyTensorError(f"x is empty (shape {x.shape}); quantization needs values")
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        amax = _unit_amax(np.abs(x.reshape(_shape2(x.shape, cfg))), cfg)
        # fmax: a NaN amax gives the floor, as the kernel's max.f32 (the NaN itself codes NaN)
        if str(cfg.granularity) == "token":
            scale = np.fmax(amax / np.float32(448.0), VLLM_TOKEN_FLOOR)
        else:
            scale = np.fmax(amax, VLLM_GROUP_EPS) / np.float32(448.0)
    scale = np.asarray(scale, np.float32)
    return fp8_codes(x, scale, cfg), scale


def _mx_scaled(x2: np.ndarray, e: np.ndarray, rule: str) -> np.ndarray:
    """x brought to the element range by its block's E8M0 byte e, as torchao's to_mx:
    floor/even divide by max(2^(e-127), 2^-126) (e = 255: +Inf), rceil multiplies by
    2^(127-e) (e = 0: by 1, e = 255: NaN). Only a block with e = 0 differs from x / 2^(e-127)."""
    e = e.astype(np.int64)
    if rule == "rceil":
        m = np.where(e == 0, 1.0, np.where(e == 255, np.nan, np.ldexp(1.0, 127 - e)))
        return (x2 * m.astype(np.float32)).astype(np.float32)
    d = np.maximum((e << 23).astype(np.uint32).view(np.float32), F32(2.0 ** -126))
    return (x2 / d).astype(np.float32)


def _encode(q: np.ndarray, fmt: codecs.MiniFloat, nan=None) -> np.ndarray:
    """Codes of the scaled values: clamp to +/-max (NaN stays NaN), RNE, E2M1 packed;
    ``nan``: the codes a NaN gets instead of the codec's (NVFP4's peers)."""
    top = np.float32(fmt.max)
    q = q.astype(np.float32)
    codes = codecs.encode(np.clip(q, -top, top), fmt)
    if nan is not None:
        codes = np.where(np.isnan(q), nan, codes).astype(np.uint8)
    return codecs.pack_low_first(codes) if fmt is codecs.E2M1 else codes


def _nvfp4(x2: np.ndarray, cfg):
    a = np.abs(x2)
    amax_t, amax = np.max(a), _unit_amax(a, cfg)
    if cfg.global_scale_convention == "modelopt":
        ws2 = np.float32(amax_t / _NVFP4_MAX)
        ws2 = np.float32(1.0) if ws2 == 0 else ws2   # ModelOpt has no rule for amax 0
        s = (amax / (np.float32(6.0) * ws2)).astype(np.float32)
        s = np.where(s == 0, np.float32(1.0), s)   # ModelOpt's zero rule, then its clamp
        s8 = codecs.encode(np.clip(s, F32(2.0 ** -9), F32(448.0)), codecs.E4M3)
        step = (codecs.decode(s8, codecs.E4M3) * ws2).astype(np.float32)
        gs = ws2
    else:
        # torch evaluates compressed-tensors' 448*6/amax (a Python number over a tensor) as
        # 448*6 * (1/amax): two roundings, kept here for bit-exactness
        gs = np.float32(np.float32(1.0) / np.maximum(amax_t, _F32_TINY)) * _NVFP4_MAX
        gs = gs if np.isfinite(gs) else np.float32(1.0)
        s = (gs * (amax / np.float32(6.0)).astype(np.float32)).astype(np.float32)
        s8 = codecs.encode(np.clip(s, -448.0, 448.0).astype(np.float32), codecs.E4M3)
        s8 = np.where(codecs.decode(s8, codecs.E4M3) == 0, np.uint8(0x20), s8).astype(np.uint8)
        step = (codecs.decode(s8, codecs.E4M3) / gs).astype(np.float32)
    q = x2 / _expand(step, x2.shape, cfg)
    # an exact zero encodes as +0 (compressed-tensors' cast: sign(-0.0) is 0; ModelOpt's
    # sign is x < 0); a negative value that rounds to zero keeps its sign (code 8), as there.
    # NaN: compressed-tensors' cast gives abs(NaN) * sign(NaN), a positive NaN, packed as
    # int8(NaN) = 0: code 0; ModelOpt's searchsorted puts NaN past the last bound: code 7
    nan = 7 if cfg.global_scale_convention == "modelopt" else 0
    codes = _encode(np.where(q == 0, F32_ZERO, q), codecs.E2M1, nan=nan)
    return codes, s8, np.asarray(gs, np.float32)


def _nf4(x: np.ndarray, block: int):
    flat = x.reshape(-1)
    full = flat.size - flat.size % block
    body = flat[:full].reshape(-1, block)
    absmax = np.max(np.abs(body), axis=1) if full else np.zeros(0, np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # full blocks multiply by the reciprocal, the tail block divides (as bitsandbytes)
        recip = (np.float32(1.0) / np.maximum(absmax, _NF4_MIN_ABSMAX)).astype(np.float32)
        parts = [(body * recip[:, None]).reshape(-1)]
        if full < flat.size:
            tail_max = np.maximum(np.max(np.abs(flat[full:])), _NF4_MIN_ABSMAX).astype(np.float32)
            absmax = np.concatenate([absmax, tail_max[None]])
            parts.append(flat[full:] / tail_max)
    scaled = np.clip(np.concatenate(parts).astype(np.float32), -1.0, 1.0)
    packed = codecs.pack_high_first(codecs.nf4_encode(scaled), pad=codecs.NF4_ZERO_CODE)
    return packed, absmax.astype(np.float32)


def nested_shape(n_absmax: int) -> tuple[int, ...]:
    """Shape of a double-quantized NF4's nested_absmax: one float32 per 256 absmax codes."""
    return (_groups(n_absmax, NESTED_BLOCK),)


def nested_mean(absmax: np.ndarray) -> np.float32:
    """The offset of double quantization, the mean of the absmax: their sum in float64 (zero-
    padded rows of MEAN_ROW, each summed by halving, pairs (2i, 2i + 1) first; the row sums
    added in order), divided by their count in float64, rounded once to float32. (bitsandbytes
    takes torch's float32 mean, whose summation order depends on the device and CPU.)"""
    a = np.asarray(absmax, np.float32).reshape(-1)
    rows = np.zeros(_groups(a.size, MEAN_ROW) * MEAN_ROW, np.float64)
    rows[: a.size] = a
    v = rows.reshape(-1, MEAN_ROW)
    with np.errstate(invalid="ignore", over="ignore"):
        while v.shape[1] > 1:
            v = v[:, 0::2] + v[:, 1::2]
        total = np.add.accumulate(v[:, 0])[-1]
        return np.float32(total / np.float64(a.size))


def nest_absmax(absmax: np.ndarray, offset=None):
    """(uint8 codes, float32 nested_absmax, float32 0-d offset) of float32 absmax values, as
    bitsandbytes' quantize_4bit(compress_statistics=True) on the CPU: d = absmax - offset
    (``offset`` default nested_mean), per 256 d: m = max |d| over the non-NaN (0 when none),
    codes dynamic_encode(d * (1 / m)), every code 0 where m is 0."""
    a = np.asarray(absmax, np.float32).reshape(-1)
    offset = nested_mean(a) if offset is None else np.float32(offset)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        d = np.zeros(nested_shape(a.size)[0] * NESTED_BLOCK, np.float32)
        d[: a.size] = a - offset
        blocks = d.reshape(-1, NESTED_BLOCK)
        mag = np.abs(blocks)
        nested = np.max(np.where(np.isnan(mag), F32_ZERO, mag), axis=1).astype(np.float32)
        inv = (np.float32(1.0) / nested).astype(np.float32)
        codes = codecs.dynamic_encode((blocks * inv[:, None]).astype(np.float32))
    codes = np.where(nested[:, None] == 0, np.uint8(0), codes).astype(np.uint8)
    return codes.reshape(-1)[: a.size], nested, np.asarray(offset, np.float32)


def unnest_absmax(codes: np.ndarray, nested: np.ndarray, offset) -> np.ndarray:
    """float32 absmax of double-quantized NF4: DYNAMIC_MAP[code] * nested_absmax, plus the offset
    (two roundings, as bitsandbytes' dequantize_blockwise then ``absmax += offset``)."""
    codes = np.asarray(codes).reshape(-1)
    step = np.repeat(np.asarray(nested, np.float32), NESTED_BLOCK)[: codes.size]
    with np.errstate(invalid="ignore", over="ignore"):
        return ((codecs.DYNAMIC_MAP[codes.astype(np.intp)] * step).astype(np.float32)
                + np.float32(offset)).astype(np.float32)


# ---------------------------------------------------------------- dequantize
def dequantize_float(codes: np.ndarray, scale: np.ndarray, global_scale, cfg,
                     shape: tuple[int, ...]) -> np.ndarray:
    """float32 values of a float-format tensor of ``shape`` (its codes and scales)."""
    shape = tuple(shape)
    numel = math.prod(shape)
    if cfg.element == "nf4":
        q = codecs.nf4_decode(codecs.unpack_high_first(codes, numel))
        if getattr(cfg, "double_quant", False):
            scale = unnest_absmax(scale, *global_scale)
        absmax = np.repeat(np.asarray(scale, np.float32), cfg.group_size)[:numel]
        return (q * absmax).astype(np.float32).reshape(shape)
    shape2 = _shape2(shape, cfg)
    fmt = _element(cfg)
    if fmt is codecs.E2M1:
        q = codecs.decode(codecs.unpack_low_first(np.asarray(codes).reshape(codes_shape(shape, cfg)),
                                                  shape2[-1]), fmt)
    else:
        q = codecs.decode(np.asarray(codes).reshape(shape2), fmt)
    if cfg.scale_format == "e8m0":
        step = codecs.decode_e8m0(scale)
    elif cfg.scale_format == "e4m3":
        s8 = codecs.decode(scale, codecs.E4M3)
        gs = np.float32(global_scale)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            modelopt = cfg.global_scale_convention == "modelopt"
            step = (s8 * gs if modelopt else s8 / gs).astype(np.float32)
    else:
        step = np.asarray(scale, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        y = q * _expand(step, shape2, cfg)
    return y.astype(np.float32).reshape(shape)
