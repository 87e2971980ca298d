"""Exact percentiles per unit on the CPU, by selection (``np.partition``).

the contract (docs/ARCHITECTURE.md, 3.3): for the n sorted values v of a unit and a percentile p,
h = (n - 1) * p / 100 (float64), i = floor(h), j = min(i + 1, n - 1), and the
result v[i] + (h - i) * (v[j] - v[i]) is computed in float64 and rounded to
float32. Values are float32 (float64 inputs are rounded first). The shared pieces live in
gpuquant.calibration.order.
"""

from __future__ import annotations

import numpy as np

from ...calibration.order import interpolate, ranks, unit_matrices
from ...core.layout import Layout
from ...core.nonfinite import nonfinite_error
from ..array_ops import NumpyOps

__all__ = ["unit_percentiles"]

_NUMPY = NumpyOps()


def _select(matrix: np.ndarray, ps: tuple[float, ...]) -> list[np.ndarray]:
    """Percentiles ``ps`` of every row of a float32 matrix of finite values."""
    n = matrix.shape[-1]
    where = [ranks(n, p) for p in ps]
    kth = sorted({k for i, j, _ in where for k in (i, j)})
    part = np.partition(matrix, kth, axis=-1)
    return [interpolate(_NUMPY, part[..., i], part[..., j], t) for i, j, t in where]


def unit_percentiles(x2: np.ndarray, layout: Layout, lower: float, upper: float,
                     ignore_nonfinite: bool = False):
    """float32 (P_lower, P_upper) per unit, shaped ``layout.unit_shape``."""
    shape2d = layout.params_2d_shape()
    lo = np.zeros(shape2d, np.float32)
    hi = np.zeros(shape2d, np.float32)
    for index, matrix in unit_matrices(x2, layout, _NUMPY):
        finite = np.isfinite(matrix)
        if finite.all():
            lo_v, hi_v = _select(matrix, (lower, upper))
        elif not ignore_nonfinite:
            raise nonfinite_error(x2, layout.shape)
        else:
            lo_v = np.zeros(matrix.shape[:-1], np.float32)
            hi_v = np.zeros(matrix.shape[:-1], np.float32)
            for unit in np.ndindex(*matrix.shape[:-1]):
                values = matrix[unit][finite[unit]]
                if values.size:
                    lo_v[unit], hi_v[unit] = _select(values, (lower, upper))
        lo[index] = lo_v.reshape(lo[index].shape)
        hi[index] = hi_v.reshape(hi[index].shape)
    return lo.reshape(layout.unit_shape), hi.reshape(layout.unit_shape)
