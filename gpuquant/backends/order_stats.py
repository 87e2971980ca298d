"""Exact percentiles per unit on the CPU, by selection (``np.partition``).

DESIGN.md section 2.3: for the n sorted values v of a unit and a percentile p,
h = (n - 1) * p / 100 (float64), i = floor(h), j = min(i + 1, n - 1), and the
result v[i] + (h - i) * (v[j] - v[i]) is computed in float64 and rounded to
float32. Values are float32 (float64 inputs are rounded first).
"""

from __future__ import annotations

import math

import numpy as np

from ..layout import Layout
from .reference import nonfinite_error

__all__ = ["unit_percentiles", "unit_matrices", "interpolate", "ranks"]


def ranks(n: int, p: float) -> tuple[int, int, float]:
    h = (n - 1) * p / 100.0
    i = math.floor(h)
    return i, min(i + 1, n - 1), h - i


def interpolate(lower_v: np.ndarray, upper_v: np.ndarray, t: float) -> np.ndarray:
    """v[i] + t * (v[j] - v[i]) in float64, rounded to float32."""
    a = lower_v.astype(np.float64)
    return (a + t * (upper_v.astype(np.float64) - a)).astype(np.float32)


def _select(matrix: np.ndarray, ps: tuple[float, ...]) -> list[np.ndarray]:
    """Percentiles ``ps`` of every row of a float32 matrix of finite values."""
    n = matrix.shape[-1]
    where = [ranks(n, p) for p in ps]
    kth = sorted({k for i, j, _ in where for k in (i, j)})
    part = np.partition(matrix, kth, axis=-1)
    return [interpolate(part[..., i], part[..., j], t) for i, j, t in where]


def unit_matrices(x2, layout: Layout, ops=None):
    """Yield (index into the 2-D params array, float32 array with one unit per last-axis row)."""
    from .array_ops import NumpyOps

    ops = ops or NumpyOps()
    mode = layout.mode
    f32 = "float32"
    if mode == "scalar":
        yield (), ops.astype(x2, f32).reshape(1, -1)
    elif mode == "col":
        yield np.s_[:], ops.astype(x2.T, f32)
    elif mode == "row" and layout.rows_are_units:
        yield np.s_[:], ops.astype(x2, f32)
    elif mode == "row":
        x = x2.reshape(layout.shape)
        yield np.s_[:], ops.astype(ops.moveaxis(x, layout.axis, 0), f32).reshape(
            layout.shape[layout.axis], -1)
    else:
        size, full = layout.group_size, layout.cols // layout.group_size
        if full:
            head = ops.astype(x2[:, : full * size], f32).reshape(layout.rows, full, size)
            yield np.s_[:, :full], head
        if layout.cols % size:
            yield np.s_[:, full:], ops.astype(x2[:, full * size:], f32)[:, None, :]


def unit_percentiles(x2: np.ndarray, layout: Layout, lower: float, upper: float,
                     ignore_nonfinite: bool = False):
    """float32 (P_lower, P_upper) per unit, shaped ``layout.unit_shape``."""
    shape2d = layout.params_2d_shape()
    lo = np.zeros(shape2d, np.float32)
    hi = np.zeros(shape2d, np.float32)
    for index, matrix in unit_matrices(x2, layout):
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
