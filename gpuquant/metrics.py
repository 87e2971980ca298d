"""Error metrics between a tensor and its reconstruction, accumulated in float64."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .core.blocks import run_blocks
from .core.frameworks import prepare, to_numpy
from .errors import InvalidShapeError

__all__ = ["mse", "sqnr", "error_sums"]


def error_sums(x: Any, y: Any) -> tuple[float, float, float, int]:
    """(sum x^2, sum (x - y)^2, max |x - y|, n) in float64, in the arrays' own framework."""
    x, xi = prepare(x, "x")
    y, yi = prepare(y, "y")
    if xi.shape != yi.shape:
        raise InvalidShapeError(f"x has shape {xi.shape} but y has shape {yi.shape}")
    n = math.prod(xi.shape)
    if xi.on_gpu or yi.on_gpu:
        xd, yd = _float64(x, xi.framework), _float64(y, yi.framework)
        diff = xd - yd
        return (float((xd * xd).sum()), float((diff * diff).sum()),
                float(abs(diff).max()), n)
    xn = to_numpy(x, xi).reshape(-1, xi.shape[-1] if xi.shape else 1)
    yn = to_numpy(y, yi).reshape(xn.shape)

    def one(span):
        r0, r1, c0, c1 = span
        a = xn[r0:r1, c0:c1].astype(np.float64)
        d = a - yn[r0:r1, c0:c1]
        return float(np.dot(a.ravel(), a.ravel())), float(np.dot(d.ravel(), d.ravel())), \
            float(np.max(np.abs(d)))

    parts = run_blocks(one, *xn.shape)
    return (math.fsum(p[0] for p in parts), math.fsum(p[1] for p in parts),
            max(p[2] for p in parts), n)


def _float64(a: Any, framework: str):
    return a.double() if framework == "torch" else a.astype("float64")


def mse(x: Any, y: Any) -> float:
    """Mean squared error between ``x`` and ``y``."""
    _, noise, _, n = error_sums(x, y)
    return noise / n


def sqnr(x: Any, y: Any) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum x^2 / sum (x - y)^2) in dB.

    An exact copy gives +inf; a zero signal with noise gives -inf.
    """
    signal, noise, _, _ = error_sums(x, y)
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)
