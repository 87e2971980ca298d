"""(lo, hi) -> (scale, zero_point): the one formula of DESIGN.md section 2.4.

Written against the NumPy API so that NumPy and CuPy arrays share it. The
Triton kernels that compute qparams on the device implement the same steps,
one IEEE float32 rounding each, and are tested against this function.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["QParams", "compute_qparams", "FLOAT32_TINY"]

FLOAT32_TINY = np.float32(np.finfo(np.float32).tiny)  # smallest normal float32


@dataclasses.dataclass(frozen=True)
class QParams:
    """float32 scales and int32 zero points, one per unit, in the input's framework."""

    scale: Any
    zero_point: Any

    def __iter__(self):
        return iter((self.scale, self.zero_point))

    def __repr__(self) -> str:
        shape = tuple(getattr(self.scale, "shape", ()))
        return f"QParams(shape={shape}, scale={self.scale!r}, zero_point={self.zero_point!r})"


def compute_qparams(lo, hi, qmin: int, qmax: int, symmetric: bool, xp=np):
    """Scales and zero points from per-unit float32 ranges.

    symmetric:  scale = max(|lo|, |hi|) / qmax;                 zero_point = 0
    asymmetric: lo' = min(lo, 0), hi' = max(hi, 0)
                scale = (hi' - lo') / (qmax - qmin);
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
            scale = amax / f32(qmax)
        else:
            lo = xp.minimum(lo, f32(0))
            hi = xp.maximum(hi, f32(0))
            scale = (hi * f32(0.5) - lo * f32(0.5)) / f32((qmax - qmin) * 0.5)  # no overflow
        bad = ~(xp.isfinite(scale) & (scale >= FLOAT32_TINY))
        scale = xp.where(bad, f32(1.0), scale).astype(f32)
        if symmetric:
            zero_point = xp.zeros(scale.shape, dtype=xp.int32)
        else:
            shifted = f32(qmin) - xp.rint(lo / scale)
            zero_point = xp.clip(shifted, f32(qmin), f32(qmax)).astype(xp.int32)
    return xp.asarray(scale), xp.asarray(zero_point)
