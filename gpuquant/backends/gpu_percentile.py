"""Exact percentiles per unit on the GPU, from the array library's sort.

torch tensors use ``torch.sort`` and CuPy arrays ``cupy.sort`` (CUB radix
sort), along the last axis of the same unit matrices the CPU reference
builds (order_stats.unit_matrices). The interpolation is DESIGN.md 2.3 in
float64 on the device, rounded to float32: the reference's bits.
"""

from __future__ import annotations

import math

from ..layout import Layout
from ..nonfinite import NonFiniteCheck
from .order_stats import ranks, unit_matrices

__all__ = ["unit_percentiles"]


def _interpolate(ops, a, b, t):
    a = ops.astype(a, "float64")
    return ops.astype(a + t * (ops.astype(b, "float64") - a), "float32")


def unit_percentiles(ops, x2, layout: Layout, lower: float, upper: float,
                     ignore_nonfinite: bool = False):
    """float32 (P_lower, P_upper) per unit, shaped ``layout.unit_shape``."""
    lo = ops.empty(layout.params_2d_shape(), "float32", x2)
    hi = ops.empty(layout.params_2d_shape(), "float32", x2)
    for index, matrix in unit_matrices(x2, layout, ops):
        finite = ops.isfinite(matrix)
        n_finite = ops.count(finite)
        n = matrix.shape[-1]
        if not ignore_nonfinite:
            NonFiniteCheck(n - n_finite, layout.shape, ops, defer=False)
            s = ops.sort(matrix)
            results = []
            for p in (lower, upper):
                i, j, t = ranks(n, p)
                results.append(_interpolate(ops, s[..., i], s[..., j], t))
        else:
            # non-finite values sort last as +inf; each unit interpolates over its finite ones
            s = ops.sort(ops.where(finite, matrix, math.inf))
            count = ops.astype(n_finite, "float64")
            results = []
            for p in (lower, upper):
                h = (count - 1) * p / 100.0
                i = ops.astype(h // 1, "int64")
                j = ops.where(i + 1 < n_finite, i + 1, n_finite - 1)
                i = ops.where(i < 0, 0, i)
                j = ops.where(j < 0, 0, j)
                t = h - ops.astype(i, "float64")
                value = _interpolate(ops, ops.take_last(s, i), ops.take_last(s, j), t)
                results.append(ops.where(n_finite > 0, value, 0.0))
        lo[index] = results[0].reshape(lo[index].shape)
        hi[index] = results[1].reshape(hi[index].shape)
    return lo.reshape(layout.unit_shape), hi.reshape(layout.unit_shape)
