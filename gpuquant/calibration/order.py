"""Backend-free pieces of the order statistics and searches, for NumPy, torch and CuPy.

They sit below the backends (gpuquant.backends) and the searches
(gpuquant.calibration.searches), so that both import them and neither imports the other:

- :func:`ranks` and :func:`interpolate`: the contract (docs/ARCHITECTURE.md, 3.3). For the n
  sorted values v of a unit and a percentile p, h = (n - 1) * p / 100
  (float64), i = floor(h), j = min(i + 1, n - 1), and the result
  v[i] + (h - i) * (v[j] - v[i]) is computed in float64 and rounded to float32;
- :func:`order_key`: the order-preserving integer key of a float32, the one
  definition the host code uses (kernels/select.py writes the same map on the
  device, where host code cannot be imported);
- :func:`unit_matrices`: the units of a 2-D view as rows of float32 matrices.

Array arguments go through an adapter ``ops`` (gpuquant.backends.array_ops
implements it); nothing here imports a backend.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.layout import Layout
from ..kernels.modes import COL, ROW, SCALAR

__all__ = ["ranks", "interpolate", "order_key", "unit_matrices"]


def ranks(n: int, p: float) -> tuple[int, int, float]:
    """(i, j, h - i) of docs/ARCHITECTURE.md 3.3 for n values and the percentile p."""
    h = (n - 1) * p / 100.0
    i = math.floor(h)
    return i, min(i + 1, n - 1), h - i


def interpolate(ops, lower_v, upper_v, t):
    """v[i] + t * (v[j] - v[i]) in float64, rounded to float32 (t: float or float64 array)."""
    a = ops.astype(lower_v, "float64")
    return ops.astype(a + t * (ops.astype(upper_v, "float64") - a), "float32")


def order_key(bits):
    """float32 bits (int32) -> int32 key ordered as the values, -0.0 just below +0.0.

    Non-negative floats keep their bits; negative ones flip their 31 low bits,
    so that a larger magnitude gives a smaller key. The map is its own inverse.
    NaN keys lie beyond the infinities (positive NaN above +inf, negative NaN
    below -inf). Works on NumPy, torch and CuPy int32 arrays alike.
    """
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def unit_matrices(x2, layout: Layout, ops):
    """Yield (index into the 2-D params array, float32 array with one unit per last-axis row)."""
    mode = layout.mode
    f32 = "float32"
    if mode == SCALAR:
        yield (), ops.astype(x2, f32).reshape(1, -1)
    elif mode == COL:
        yield np.s_[:], ops.astype(x2.T, f32)
    elif mode == ROW and layout.rows_are_units:
        yield np.s_[:], ops.astype(x2, f32)
    elif mode == ROW:
        yield np.s_[:], ops.astype(layout.channel_rows(x2), f32)
    else:
        size, full = layout.group_size, layout.cols // layout.group_size
        if full:
            head = ops.astype(x2[:, : full * size], f32).reshape(layout.rows, full, size)
            yield np.s_[:, :full], head
        if layout.cols % size:
            yield np.s_[:, full:], ops.astype(x2[:, full * size:], f32)[:, None, :]
