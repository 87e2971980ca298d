"""Exact percentiles on the GPU: radix selection for a whole tensor, sorting per unit.

A whole tensor (any size, past 2^31 elements) uses radix selection: each
float32 maps to an order-preserving 32-bit key; a histogram of the keys'
high 16 bits finds the bin of each wanted rank, and a histogram of the low
16 bits of that bin's elements finds the exact key. Two reads of the data
for each distinct high bin, no sort, and every library call sees at most
2^28 elements at once (CUB and some torch kernels count in 32 bits).

Per channel and per group, torch tensors use ``torch.sort`` along the last
axis of the same unit matrices the CPU reference builds
(order_stats.unit_matrices). CuPy's N-d sort along an axis compares
elements; :func:`segmented_sort` instead sorts one flat array of composite
int64 keys (unit index above the value's order-preserving 32 bits), which
CuPy hands to CUB's radix sort.

Either way the interpolation is DESIGN.md 2.3 in float64, rounded to
float32: the reference's bits.
"""

from __future__ import annotations

import math

import numpy as np

from ..layout import Layout
from ..nonfinite import raise_counts
from .order_stats import ranks, unit_matrices

__all__ = ["unit_percentiles"]


def _interpolate(ops, a, b, t):
    a = ops.astype(a, "float64")
    return ops.astype(a + t * (ops.astype(b, "float64") - a), "float32")


_CHUNK = 1 << 28  # elements a step: a few GiB of int64 temporaries at most
_HALF = 1 << 16


def _key_halves(ops, chunk):
    """(high 16, low 16) bits of the order-preserving key of float32 values, as int64.

    key = 2^31 + m for x >= +0 and 2^31 - 1 - m for x <= -0 (m: the magnitude bits).
    """
    bits = ops.astype(ops.bits32(chunk), "int64")
    m = bits & 0x7FFFFFFF
    negative = bits < 0
    high = ops.where(negative, 32767 - (m >> 16), 32768 + (m >> 16))
    low = ops.where(negative, 65535 - (m & 0xFFFF), m & 0xFFFF)
    return high, low


def order_keys(xp, a):
    """float32 -> int64 in [0, 2^32), ordered as the values (-0 just below +0)."""
    bits = a.view(xp.int32).astype(xp.int64)
    m = bits & 0x7FFFFFFF
    return xp.where(bits < 0, 0x7FFFFFFF - m, 0x80000000 + m)


def segmented_sort(xp, a):
    """Sort float32 a (..., n) along the last axis with one radix sort of composite keys."""
    n = a.shape[-1]
    units = a.size // max(n, 1)
    unit = (xp.arange(units, dtype=xp.int64) << 32).reshape(*a.shape[:-1], 1)
    keys = xp.sort((unit | order_keys(xp, a)).reshape(-1)) & 0xFFFFFFFF
    bits = xp.where(keys >= 0x80000000, keys - 0x80000000, (0x7FFFFFFF - keys) | 0x80000000)
    return bits.astype(xp.uint32).view(xp.float32).reshape(a.shape)


def _value_of(key: int) -> float:
    bits = key - (1 << 31) if key >= 1 << 31 else ((1 << 31) - 1 - key) | (1 << 31)
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def _select(ops, flat, finite_only: bool, wanted: list[int]) -> dict[int, float]:
    """The exact order statistics ``wanted`` (0-based ranks) of a flat float32 array."""
    def histogram(select_high=None):
        total = None
        for start in range(0, flat.shape[0], _CHUNK):
            chunk = ops.astype(flat[start: start + _CHUNK], "float32")
            high, low = _key_halves(ops, chunk)
            keep = ops.isfinite(chunk) if finite_only else None
            if select_high is not None:
                match = high == select_high
                keep = match if keep is None else keep & match
                values = low
            else:
                values = high
            if keep is not None:
                values = values[keep]
            counts = ops.to_host(ops.bincount(values, _HALF)).astype(np.int64)
            total = counts if total is None else total + counts
        return np.cumsum(total)

    high_cum = histogram()
    found = {}
    for rank in sorted(set(wanted)):
        b = int(np.searchsorted(high_cum, rank, side="right"))
        within = rank - (int(high_cum[b - 1]) if b else 0)
        low_cum = histogram(select_high=b)
        low = int(np.searchsorted(low_cum, within, side="right"))
        found[rank] = _value_of((b << 16) | low)
    return found


def _tensor_percentiles(ops, x2, layout: Layout, lower, upper, ignore_nonfinite):
    flat = x2.reshape(-1)
    n_bad = sum(int(ops.to_host(ops.count(~ops.isfinite(flat[i: i + _CHUNK]))))
                for i in range(0, flat.shape[0], _CHUNK))
    n = flat.shape[0] - n_bad
    if not ignore_nonfinite:
        raise_counts(np.asarray([n_bad]), layout.shape, ops)
    if n == 0:
        return np.float32(0), np.float32(0)
    where = [ranks(n, p) for p in (lower, upper)]
    found = _select(ops, flat, ignore_nonfinite, [k for i, j, _ in where for k in (i, j)])
    out = []
    for i, j, t in where:
        a = found[i]
        out.append(np.float32(a + t * (found[j] - a)))
    return out[0], out[1]


def unit_percentiles(ops, x2, layout: Layout, lower: float, upper: float,
                     ignore_nonfinite: bool = False):
    """float32 (P_lower, P_upper) per unit, shaped ``layout.unit_shape``."""
    if layout.mode == "scalar":
        lo, hi = _tensor_percentiles(ops, x2, layout, lower, upper, ignore_nonfinite)
        like = x2
        return (ops.from_host(np.asarray(lo, np.float32), like),
                ops.from_host(np.asarray(hi, np.float32), like))
    lo = ops.empty(layout.params_2d_shape(), "float32", x2)
    hi = ops.empty(layout.params_2d_shape(), "float32", x2)
    for index, matrix in unit_matrices(x2, layout, ops):
        finite = ops.isfinite(matrix)
        n_finite = ops.count(finite)
        n = matrix.shape[-1]
        if not ignore_nonfinite:
            raise_counts(n - n_finite, layout.shape, ops)
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
