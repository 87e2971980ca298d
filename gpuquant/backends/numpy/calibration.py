"""Calibration primitives written with array-library calls: the NumPy reference's.

:func:`abs_histogram` runs through an array adapter (``ops``) on NumPy, torch
or CuPy; :func:`mse_errors` is the reference's error sweep on NumPy arrays.
The Triton backend has kernels for both (gpuquant.backends.triton.calibration).
"""

from __future__ import annotations

import math

import numpy as np

from ...calibration.order import unit_matrices
from ...config import QuantConfig
from ...core.blocks import run_blocks
from ...core.layout import Layout
from ...core.qparams import compute_qparams
from ..array_ops import NumpyOps

__all__ = ["abs_histogram", "mse_errors"]

F32 = np.float32
_MSE_BLOCK = 1 << 17  # values per block of the MSE sweep: float32 + float64 copies in L2


def abs_histogram(ops, x2, layout: Layout, amax, bins: int, signed: bool = False):
    """int64 counts per unit, shaped params_2d_shape + (bins,); non-finite values skipped.

    Unsigned (entropy): |x| over [0, amax], bin = min(floor(|x| * (bins / amax)), bins - 1).
    Signed (the Calibrator's streamed histograms, amax the radius R > max|x|, a power of
    two): bin = floor(x * s) + bins / 2 with s = (bins / 2) / R, clipped to [0, bins - 1];
    a negative x whose product underflowed to -0 takes the bin below bins / 2, as the exact
    floor does. With bins a power of two, s is one too and x * s is exact, so the bin is
    the exact floor and binning at 2R equals merging pairs of the bins at R
    (gpuquant.calibration.histograms). float32 arithmetic, one rounding a step.
    """
    shape2d = layout.params_2d_shape()
    amax = ops.astype(amax, "float32").reshape(shape2d)
    counts = None
    for index, matrix in unit_matrices(x2, layout, ops):
        lead = matrix.shape[:-1]
        width = amax[index].reshape(*lead, 1) if lead else amax[index].reshape(1)
        with np.errstate(all="ignore"):
            scale = ops.astype((bins // 2 if signed else bins) / ops.where(width > 0, width, 1.0),
                               "float32")
            scaled = (matrix if signed else abs(matrix)) * scale
        finite = ops.isfinite(scaled)
        pos = ops.floor(ops.where(finite, scaled, 0.0))
        if signed:
            pos = ops.where((matrix < 0) & (pos > -1), -1.0, pos) + bins // 2
        idx = ops.astype(pos, "int64")
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

    The exact sweep: every candidate quantizes every value (float32, as the
    contract) and each unit's float64 squared errors are summed by one einsum
    over its whole row. Work is cut into blocks of whole units (about
    ``_MSE_BLOCK`` values) that stay in cache for all the candidates, on every
    core (gpuquant.core.blocks). Each unit's sum sees the same values in the same
    order as an unblocked sweep, so the errors are the same bits.

    Cost: about 8 float32/float64 passes per value and candidate: on 2 cores,
    4096 x 4096 float32 with 100 candidates takes seconds, against tens of
    milliseconds for a min/max quantize. A histogram or sorted-value search
    would be faster but sums in another order, and the choice of the first
    candidate within a relative 1e-9 of the least error could then differ.
    """
    n_cand = len(factors)
    shape2d = layout.params_2d_shape()
    lo = np.asarray(lo, F32).reshape(-1, 1)
    hi = np.asarray(hi, F32).reshape(-1, 1)
    scale, zp = compute_qparams(lo * factors[None, :], hi * factors[None, :], config.qmin,
                                config.qmax, config.symmetric, scale_rule=config.scale_rule)
    with np.errstate(all="ignore"):
        inv = F32(1) / scale
    params = [p.reshape(*shape2d, n_cand) for p in (inv, scale, zp.astype(F32))]
    errors = np.zeros((*shape2d, n_cand), np.float64)
    for index, m in unit_matrices(x2, layout, NumpyOps()):
        n = m.shape[-1]
        rows = m.reshape(-1, n)
        unit_params = [p[index].reshape(-1, n_cand) for p in params]
        out = np.empty((rows.shape[0], n_cand), np.float64)

        def one(span, rows=rows, unit_params=unit_params, out=out):
            r0, r1 = span[0], span[1]
            # einsum sums a lone row in another order than a row among others: a block of
            # one row (of several) borrows a neighbour, whose sum it drops
            a = r0 - 1 if r1 - r0 == 1 < len(rows) and r0 else r0
            b = r1 + 1 if r1 - r0 == 1 < len(rows) and not r0 else r1
            part = np.empty((b - a, out.shape[1]), np.float64)
            _sweep(rows[a:b], [p[a:b] for p in unit_params], config, part)
            out[r0:r1] = part[r0 - a: r1 - a]

        run_blocks(one, rows.shape[0], n, target=max(_MSE_BLOCK, n))
        errors[index] = out.reshape(errors[index].shape)
    return errors.reshape(-1, n_cand)


def _sweep(m: np.ndarray, params, config: QuantConfig, out: np.ndarray) -> None:
    """out[u, c] = sum over the row u of m of (dequantize(quantize(x)) - x)^2, float64."""
    m = np.where(np.isfinite(m), m, F32(0))  # a zero quantizes and dequantizes to 0
    m64 = m.astype(np.float64)
    buf, diff = np.empty_like(m), np.empty_like(m64)
    unit_inv, unit_scale, unit_zp = params
    for c in range(out.shape[1]):
        s, z = unit_scale[:, c, None], unit_zp[:, c, None]
        with np.errstate(all="ignore"):
            if config.scale_rule == "half_range":  # the codes of half_range: x / scale
                np.divide(m, s, out=buf)
            else:
                np.multiply(m, unit_inv[:, c, None], out=buf)
            np.rint(buf, out=buf)
            # clamp(rint + zp, qmin, qmax) - zp as one clip to (qmin - zp, qmax - zp): the
            # same integers (exact in float32 below 2^24, clipped alike above); only the
            # sign of a zero may differ, which changes no square
            np.clip(buf, config.qmin - z, config.qmax - z, out=buf)
            np.multiply(buf, s, out=buf)  # float32(q - zp) * scale
        np.subtract(buf, m64, out=diff)
        out[:, c] = np.einsum("...j,...j->...", diff, diff)
