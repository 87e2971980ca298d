"""Calibration primitives written with array-library calls: the NumPy reference's.

:func:`abs_histogram` runs through an array adapter (``ops``) on NumPy, torch
or CuPy; :func:`mse_errors` is the reference's error sweep on NumPy arrays.
The Triton backend has kernels for both (gpuquant.backends.triton_calibration).
"""

from __future__ import annotations

import math

import numpy as np

from ..config import QuantConfig
from ..layout import Layout
from ..qparams import compute_qparams
from ..units import unit_matrices
from .array_ops import NumpyOps

__all__ = ["abs_histogram", "mse_errors"]

F32 = np.float32


def abs_histogram(ops, x2, layout: Layout, amax, bins: int, signed: bool = False):
    """int64 counts per unit, shaped params_2d_shape + (bins,); non-finite values skipped.

    Unsigned (entropy): |x| over [0, amax], bin = min(floor(|x| * (bins / amax)), bins - 1).
    Signed (Calibrator histograms): x over [-amax, amax], bin = floor((x + amax) *
    (bins / (2 amax))) clipped to [0, bins - 1]. float32 arithmetic, one rounding a step.
    """
    shape2d = layout.params_2d_shape()
    amax = ops.astype(amax, "float32").reshape(shape2d)
    counts = None
    for index, matrix in unit_matrices(x2, layout, ops):
        lead = matrix.shape[:-1]
        width = amax[index].reshape(*lead, 1) if lead else amax[index].reshape(1)
        span = width + width if signed else width
        with np.errstate(all="ignore"):
            scale = ops.astype(bins / ops.where(span > 0, span, 1.0), "float32")
            scaled = (matrix + width if signed else ops.abs(matrix)) * scale
        finite = ops.isfinite(scaled)
        idx = ops.astype(ops.floor(ops.where(finite, scaled, 0.0)), "int64")
        idx = ops.where(idx < bins - 1, idx, bins - 1)
        idx = ops.where(idx > 0, idx, 0)
        units = math.prod(lead)
        unit = ops.astype(ops.from_host(np.arange(units).reshape(*lead, 1), matrix), "int64")
        flat = (unit * bins + idx).reshape(-1)[finite.reshape(-1)]
        part = ops.bincount(flat, units * bins).reshape(*lead, bins)
        if counts is None:
            counts = ops.empty(shape2d + (bins,), "int64", matrix)
        counts[index] = part.reshape(counts[index].shape)
    return counts


def mse_errors(x2: np.ndarray, layout: Layout, lo, hi, factors: np.ndarray,
               config: QuantConfig) -> np.ndarray:
    """float64 (units, candidates) squared errors of the ranges (lo, hi) * factor.

    One pass per candidate over each unit matrix; the GPU backend sums every
    candidate in one read.
    """
    n_cand = len(factors)
    shape2d = layout.params_2d_shape()
    lo = np.asarray(lo, F32).reshape(-1, 1)
    hi = np.asarray(hi, F32).reshape(-1, 1)
    scale, zp = compute_qparams(lo * factors[None, :], hi * factors[None, :], config.qmin,
                                config.qmax, config.symmetric)
    with np.errstate(all="ignore"):
        inv = F32(1) / scale
    params = [p.reshape(*shape2d, n_cand) for p in (inv, scale, zp.astype(F32))]
    errors = np.zeros((*shape2d, n_cand), np.float64)
    for index, m in unit_matrices(x2, layout, NumpyOps()):
        m = np.where(np.isfinite(m), m, F32(0))  # a zero quantizes and dequantizes to 0
        m64 = m.astype(np.float64)
        buf, diff = np.empty_like(m), np.empty_like(m64)
        unit_inv, unit_scale, unit_zp = (p[index] for p in params)
        for c in range(n_cand):
            s, z = unit_scale[..., c, None], unit_zp[..., c, None]
            with np.errstate(all="ignore"):
                np.multiply(m, unit_inv[..., c, None], out=buf)
                np.rint(buf, out=buf)
                np.add(buf, z, out=buf)
                np.clip(buf, config.qmin, config.qmax, out=buf)
                np.subtract(buf, z, out=buf)
                np.multiply(buf, s, out=buf)  # float32(q - zp) * scale
            np.subtract(buf, m64, out=diff)
            errors[index][..., c] = np.einsum("...j,...j->...", diff, diff)
    return errors.reshape(-1, n_cand)
