"""The one rule that combines moving-average min/max states (``Calibrator.merge`` and
``Calibrator.all_reduce`` alike): the batch-weighted mean of the states' ranges,
``lo = sum(n_r * lo_r) / sum(n_r)``, summed in float64 and rounded once to float32.

A state contributes :func:`weighted_sums`; the sums of any number of states (added
here for two, by a SUM all_reduce for a process group) give the range through
:func:`mean_of_sums`. float64 addition is commutative, so two states give the same
bits whichever is added first, merged or all-reduced.
"""

from __future__ import annotations

import numpy as np

__all__ = ["weighted_sums", "mean_of_sums"]


def weighted_sums(lo, hi, batches: int, units: int) -> np.ndarray:
    """float64 ``[n * lo..., n * hi..., n]`` of one state (zeros for a state without
    batches); ``n * lo`` is exact in float64 for n < 2^29."""
    sums = np.zeros(2 * units + 1, np.float64)
    if batches > 0:
        sums[:units] = np.asarray(lo, np.float64).reshape(-1) * batches
        sums[units:-1] = np.asarray(hi, np.float64).reshape(-1) * batches
        sums[-1] = batches
    return sums


def mean_of_sums(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(lo, hi, batches) of summed :func:`weighted_sums`: float32 (lo, hi) per unit."""
    units, total = (sums.size - 1) // 2, sums[-1]
    lo = (sums[:units] / total).astype(np.float32)
    hi = (sums[units:-1] / total).astype(np.float32)
    return lo, hi, int(total)
