"""The calibration methods' ranges: from data to float32 (lo, hi) per unit.

One dispatch for ``gq.calibrate``, the Calibrator's first batches and the
quantize plans: min/max, exact percentile, entropy (KL) and MSE, through
the backend primitives (the procedures are stated in gpuquant/searches.py).
"""

from __future__ import annotations

from ..backends.array_ops import ops_for
from ..config import MSE, Entropy, Percentile, QuantConfig
from ..core.layout import Layout
from .searches import first_minimum, kl_best_bins, mse_factors

__all__ = ["calibration_range"]


def calibration_range(be, x2, layout: Layout, config: QuantConfig, defer: bool = False):
    """float32 (lo, hi) per unit by the config's calibration method.

    ``defer``: a GPU backend may report NaN/Inf later instead of waiting for
    the device (see gpuquant.core.nonfinite); the quantize path asks for that.
    """
    cal = config.calibration
    if isinstance(cal, Percentile):
        return be.percentile(x2, layout, cal.lower, cal.upper, config.ignore_nonfinite)
    lo, hi = be.minmax(x2, layout, config.ignore_nonfinite, defer=defer)
    if isinstance(cal, Entropy):
        return _entropy_range(be, x2, layout, config, lo, hi)
    if isinstance(cal, MSE):
        return _mse_range(be, x2, layout, config, lo, hi)
    return lo, hi


def _entropy_range(be, x2, layout: Layout, config: QuantConfig, lo, hi):
    """Clip to the KL threshold T: (-T, T) symmetric, (max(lo, -T), min(hi, T)) otherwise."""
    ops = ops_for(lo)
    bins = config.calibration.bins
    a, b = abs(lo), abs(hi)
    amax = ops.where(a > b, a, b)
    hist = be.abs_histogram(x2, layout, amax, bins).reshape(-1, bins)
    best = kl_best_bins(ops, hist, 1 << (config.bits - 1))
    width = ops.astype(amax, "float64").reshape(-1) / bins
    t = ops.astype(width * ops.astype(best, "float64"), "float32").reshape(layout.unit_shape)
    if config.symmetric:
        return -t, t
    return ops.where(lo > -t, lo, -t), ops.where(hi < t, hi, t)


def _mse_range(be, x2, layout: Layout, config: QuantConfig, lo, hi):
    """The shrink factor with the least squared error (ties to the widest range)."""
    ops = ops_for(lo)
    factors = mse_factors(config.calibration.candidates, ops, lo)  # on lo's device
    errors = be.mse_errors(x2, layout, lo, hi, factors, config)
    pick = first_minimum(ops, errors)
    f = factors[pick].reshape(layout.unit_shape)
    return lo * f, hi * f
