"""(lo, hi) -> (scale, zero_point): the one formula of the contract (docs/ARCHITECTURE.md, 3.4).

Written against the NumPy API so that NumPy and CuPy arrays share it. The
Triton kernels that compute qparams on the device implement the same steps,
one IEEE float32 rounding each, and are tested against this function.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..errors import InvalidCalibrationError, InvalidDtypeError
from .frameworks import framework_of

__all__ = ["QParams", "compute_qparams", "check_user_qparams", "asymmetric_scale", "FLOAT32_TINY",
           "FLOAT32_EPS"]

FLOAT32_TINY = np.float32(np.finfo(np.float32).tiny)  # smallest normal float32
FLOAT32_EPS = np.float32(2.0 ** -23)  # half_range's scale of an all-zero unit (compressed-tensors')


@dataclasses.dataclass(frozen=True)
class QParams:
    """float32 scales and int32 zero points, one per unit, in the input's framework."""

    scale: Any
    zero_point: Any

    def __iter__(self):
        return iter((self.scale, self.zero_point))

    def __repr__(self) -> str:
        """Shape, dtypes and a summary; never every value (a per-group QParams has millions)."""
        shape = tuple(int(s) for s in getattr(self.scale, "shape", ()))
        dtype = str(getattr(self.scale, "dtype", type(self.scale).__name__)).replace("torch.", "")
        try:
            scale = _host_array(self.scale)
            zero_point = _host_array(self.zero_point)
            if scale.size == 0:
                return f"QParams(shape={shape}, dtype={dtype}, empty)"
            return (f"QParams(shape={shape}, dtype={dtype}, scale=[{scale.min():.6g} .. "
                    f"{scale.max():.6g}], zero_points={np.unique(zero_point).size} distinct)")
        except Exception:  # a device array we will not copy, or something odd: no summary
            return f"QParams(shape={shape}, dtype={dtype})"


def _host_array(a: Any) -> np.ndarray:
    """A NumPy view of CPU arrays (torch CPU tensors included); GPU arrays raise."""
    framework = framework_of(a)
    if framework == "torch":
        if a.device.type != "cpu":
            raise TypeError("on a device")
        a = a.detach().resolve_neg()
        return a.float().numpy() if a.is_floating_point() else a.numpy()
    if framework == "cupy":
        raise TypeError("on a device")
    return np.asarray(a)


def asymmetric_scale(lo, hi, qmin: int, qmax: int, xp=np):
    """(hi - lo) / (qmax - qmin) for lo <= 0 <= hi, without overflow; float32 steps.

    The plain quotient is used whenever ``hi - lo`` is finite, so its bits are
    those of docs/ARCHITECTURE.md 3.4. Where ``hi - lo`` overflows (a range wider than
    float32, such as [-3e38, 3e38]), the halved form
    ``(hi * 0.5 - lo * 0.5) / ((qmax - qmin) * 0.5)`` is used instead. Proof that
    it is then exact: an overflow needs |lo| + |hi| > FLOAT32_MAX, so the smaller
    of the two is at least FLOAT32_MAX - max(|lo|, |hi|) + ulp/2 >= 2^103, and
    both are normal: halving a normal float32 >= 2^-125 is exact. (qmax - qmin) / 2
    is exact (7.5, 127.5, 32767.5). So the two roundings (difference, quotient) are
    those of the plain formula computed with one more exponent bit.
    The halved form is not used everywhere on purpose: where one end is a
    subnormal whose halving rounds, it can differ in the last bit even for a
    normal scale (hi = 2^-110, lo = -(2^-134 + 2^-149)); see
    tests/test_qparams.py.
    """
    f32 = xp.float32
    width = f32(qmax - qmin)
    diff = hi - lo
    plain = diff / width
    halved = (hi * f32(0.5) - lo * f32(0.5)) / (width * f32(0.5))
    return xp.where(xp.isinf(diff), halved, plain).astype(f32)


def compute_qparams(lo, hi, qmin: int, qmax: int, symmetric: bool, xp=np,
                    scale_rule: str | None = "max"):
    """Scales and zero points from per-unit float32 ranges.

    symmetric:  scale = max(|lo|, |hi|) / qmax;                 zero_point = 0
                scale_rule="half_range": max(|lo|, |hi|) / ((qmax - qmin) / 2) (7.5, 127.5,
                32767.5: exact in float32), a zero scale -> 2^-23 (float32 eps), as
                compressed-tensors' calculate_qparams and torchao
    asymmetric: lo' = min(lo, 0), hi' = max(hi, 0)
                scale = (hi' - lo') / (qmax - qmin), halved where hi' - lo'
                overflows (see :func:`asymmetric_scale`);
                zero_point = clamp(qmin - rint(lo' / scale), qmin, qmax)
    A scale that is 0, subnormal, inf or NaN becomes 1.0 before the zero point
    is computed from it.
    """
    f32 = xp.float32
    lo = xp.asarray(lo, dtype=f32)
    hi = xp.asarray(hi, dtype=f32)
    with np.errstate(all="ignore"):
        if symmetric:
            amax = xp.maximum(xp.abs(lo), xp.abs(hi))
            if scale_rule == "half_range":
                scale = amax / f32((qmax - qmin) / 2)
                scale = xp.where(scale == 0, FLOAT32_EPS, scale)
            else:
                scale = amax / f32(qmax)
        else:
            lo = xp.minimum(lo, f32(0))
            hi = xp.maximum(hi, f32(0))
            scale = asymmetric_scale(lo, hi, qmin, qmax, xp)
        bad = ~(xp.isfinite(scale) & (scale >= FLOAT32_TINY))
        scale = xp.where(bad, f32(1.0), scale).astype(f32)
        if symmetric:
            zero_point = xp.zeros(scale.shape, dtype=xp.int32)
        else:
            shifted = f32(qmin) - xp.rint(lo / scale)
            zero_point = xp.clip(shifted, f32(qmin), f32(qmax)).astype(xp.int32)
    return xp.asarray(scale), xp.asarray(zero_point)


def check_user_qparams(scale: np.ndarray, zero_point: np.ndarray, qmin: int, qmax: int,
                       prefix: str = "qparams.") -> tuple[np.ndarray, np.ndarray]:
    """Check host (NumPy) qparams a user gave; return them as float32 and int32.

    Accepted: real integer or floating scales that are, once rounded to float32,
    finite, positive and normal (at least FLOAT32_TINY: a subnormal scale has no
    exact reciprocal); integer zero points (integer dtype, or floats holding
    integers) inside [qmin, qmax]. Complex, bool and non-numeric arrays raise
    InvalidDtypeError; bad values raise InvalidCalibrationError. Shapes are the
    caller's to check (Layout.check_params). Messages name ``prefix + "scale"``.
    """
    scale = np.asarray(scale)
    zero_point = np.asarray(zero_point)
    for name, value in ((prefix + "scale", scale), (prefix + "zero_point", zero_point)):
        if value.dtype.kind not in "iuf":
            raise InvalidDtypeError(
                f"{name} has dtype {value.dtype}; accepted: real integer or floating arrays "
                "(complex, bool and object arrays are refused)")
    with np.errstate(all="ignore"):
        scale32 = scale.astype(np.float32)
        good = np.isfinite(scale32) & (scale32 >= FLOAT32_TINY)
    if not good.all():
        bad = scale.reshape(-1)[np.flatnonzero(~good.reshape(-1))[0]]
        raise InvalidCalibrationError(
            f"{prefix}scale must be finite, positive and a normal float32 (>= {FLOAT32_TINY:.6g}) "
            f"everywhere; got {bad!r} at flat index {int(np.flatnonzero(~good.reshape(-1))[0])}")
    if zero_point.dtype.kind == "f":
        with np.errstate(all="ignore"):
            integral = np.isfinite(zero_point) & (zero_point == np.rint(zero_point))
        if not integral.all():
            raise InvalidCalibrationError(
                f"{prefix}zero_point must hold integers; got "
                f"{zero_point.reshape(-1)[np.flatnonzero(~integral.reshape(-1))[0]]!r}")
    if zero_point.size and (zero_point.min() < qmin or zero_point.max() > qmax):
        raise InvalidCalibrationError(
            f"{prefix}zero_point must lie in [{qmin}, {qmax}]; got {zero_point.min()} .. "
            f"{zero_point.max()}")
    return scale32, zero_point.astype(np.int32)
