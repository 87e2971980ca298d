"""Entropy (KL) and MSE calibration searches, written once for NumPy, torch and CuPy.

Both run on the array's own device through an array adapter ``ops`` (the
interface of gpuquant.backends.array_ops, passed in: this module imports no
backend), with no Python loop per candidate.

Entropy (TensorRT's procedure). Per unit, a histogram h of |x| over
[0, amax] with B bins: bin = min(floor(|x| * (B / amax)), B - 1), with
B / amax one float32 division and one float32 multiply (int64 counts; the
backends' ``abs_histogram``). With
nq = 2^(bits - 1) quantized bins, for each candidate i = nq .. B:

- P is h[:i] with the mass of h[i:] (the outliers) added to bin i - 1;
- Q merges the i bins h[:i] (as TensorRT: without the outliers) into nq
  groups, bin k going to group floor(k * nq / i), and spreads each group's
  mass evenly over the group's bins where P is non-empty (Q = 0 where P = 0);
- KL(P || Q) over P / sum(P) and Q / sum(Q), bins with P = 0 contributing 0.
  A bin where P > 0 but Q = 0 (the last group holds only outliers) takes
  Q = EPSILON = 1e-4 counts instead; Q is not renormalised for it. A
  candidate whose h[:i] is empty has KL = inf.

For every candidate at once, with N = sum(P) and M = sum(h[:i]):
N * KL = sum P log P - N log N + N log M - sum over groups of
P-mass * log(q), q = group mass / non-empty bins (or EPSILON), from prefix
sums of h, of [h > 0] and of h log h. The threshold is
T = float32(i * (amax / B)) (float64 product) for the first i whose KL is
within a relative 1e-9 of the minimum: that tolerance absorbs the last-ulp
differences of log and summation order between NumPy and the GPU, so every
backend picks the same i.

MSE. Candidates shrink (lo, hi) to (lo * f, hi * f), f = float32(1 - k / N),
k = 0 .. N - 1; each candidate's qparams follow the contract and its error is
the float64 sum of (dequantize(quantize(x)) - x)^2. The first candidate
within a relative 1e-9 of the least error wins: ties go to the widest
range, and f = 1 (min/max) is never beaten by more than that tolerance.
"""

from __future__ import annotations

import numpy as np

__all__ = ["kl_best_bins", "first_minimum", "mse_factors", "RELATIVE_TIE"]

RELATIVE_TIE = 1e-9
EPSILON = 1e-4  # counts given to a Q bin that is empty where P is not
_SEARCH_ELEMENTS = 1 << 24  # (units, candidates, groups) per step of the KL search


def _plogp(ops, p):
    """p log p with 0 log 0 = 0, for float64 p >= 0."""
    return ops.where(p > 0, p * ops.log(ops.where(p > 0, p, 1.0)), 0.0)


def kl_best_bins(ops, hist, nq: int):
    """For each unit (rows of ``hist``, (U, B) int64), the candidate i with the least KL."""
    units, bins = hist.shape
    cand = ops.arange(nq, bins + 1, "int64", hist)  # built on the device: no host copy
    j = ops.arange(0, nq + 1, "int64", hist)
    edges = -((-j.reshape(1, -1) * cand.reshape(-1, 1)) // nq)  # ceil(j * i / nq), (C, nq+1)
    starts, ends = edges[:, :-1], edges[:, 1:]
    h = ops.astype(hist, "int64")
    prefix = _with_zero(ops, h.cumsum(-1))                       # (U, B+1) exact int64
    nonempty = _with_zero(ops, ops.astype(h > 0, "int64").cumsum(-1))
    plogp = _with_zero(ops, _plogp(ops, ops.astype(h, "float64")).cumsum(-1))
    best = []
    step = max(1, _SEARCH_ELEMENTS // ((bins + 1 - nq) * nq))
    for u0 in range(0, units, step):
        rows = slice(u0, min(units, u0 + step))
        best.append(_kl_rows(ops, h[rows], prefix[rows], nonempty[rows], plogp[rows],
                             cand, starts, ends))
    return best[0] if len(best) == 1 else ops.concat(best)


def _with_zero(ops, scan):
    """Prefix sums with a leading 0 column: (U, B) -> (U, B + 1)."""
    lead = scan[:, :1] * 0
    return ops.concat([lead, scan], axis=1)


def _gather(ops, table, index):
    """table (U, B+1) gathered at the same index (C,) or (C, G) for every unit: (U, C[, G]),
    C-ordered (take_along broadcasts the one row of indices over the units)."""
    flat = ops.take_along(table, index.reshape(1, -1))
    return flat.reshape(table.shape[0], *index.shape)


def _kl_rows(ops, h, prefix, nonempty, plogp, cand, starts, ends):
    total = ops.astype(prefix[:, -1:], "float64")                      # N      (U, 1)
    at_i = _gather(ops, prefix, cand)                                  # M = H[i] (U, C)
    last = _gather(ops, h, cand - 1)
    outliers = ops.astype(prefix[:, -1:] - at_i, "float64")          # mass beyond bin i-1
    p_last = ops.astype(last, "float64") + outliers                   # P[i-1]
    p_log_p = _gather(ops, plogp, cand - 1) + _plogp(ops, p_last)
    mass = ops.astype(_gather(ops, prefix, ends) - _gather(ops, prefix, starts), "float64")
    count = ops.astype(_gather(ops, nonempty, ends) - _gather(ops, nonempty, starts), "float64")
    # the outliers join P's last bin (and so the last group); they make it non-empty
    p_mass = _add_last(ops, mass, outliers)
    count = _add_last(ops, count, ops.astype((last == 0) & (outliers > 0), "float64"))
    q = ops.where(mass > 0, mass / ops.where(count > 0, count, 1.0), EPSILON)
    p_log_q = ops.where(p_mass > 0, p_mass * ops.log(q), 0.0).sum(-1)
    m = ops.astype(at_i, "float64")
    n_log_n = _plogp(ops, total)
    kl = (p_log_p - n_log_n + total * ops.log(ops.where(m > 0, m, 1.0)) - p_log_q) / \
        ops.where(total > 0, total, 1.0)
    kl = ops.where(m > 0, kl, float("inf"))
    return cand[first_minimum(ops, kl)]


def _add_last(ops, a, extra):
    """a[..., -1] += extra (per unit and candidate), out of place."""
    pad = [a[..., :-1], (a[..., -1] + extra)[..., None]]
    return ops.concat(pad, axis=-1)


def first_minimum(ops, values):
    """Index of the first entry within RELATIVE_TIE of each row's minimum."""
    low = ops.amin(values, axis=-1).reshape(-1, 1)
    near = values <= low + abs(low) * RELATIVE_TIE
    return ops.astype(near, "int64").argmax(-1)


def mse_factors(candidates: int, ops=None, like=None):
    """float32 shrink factors 1 - k / N, k = 0 .. N - 1 (computed in float64, rounded).

    NumPy by default; with an array adapter, built on ``like``'s device (IEEE
    float64 there too, so the same bits) instead of copied from the host.
    """
    if ops is None:
        k = np.arange(candidates, dtype=np.float64)
        return (1.0 - k / candidates).astype(np.float32)
    k = ops.arange(0, candidates, "float64", like)
    return ops.astype(1.0 - k / candidates, "float32")
