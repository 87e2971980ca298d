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
P-mass * (log(group mass) - log(non-empty bins)) (log EPSILON for a group of
outliers only), from prefix sums of h, of [h > 0] and of h log h. The
threshold is T = float32(i * (amax / B)) (float64 product) for the first i
whose KL is within max(1e-9 * |KL_min|, 1e-12 * (4 log N + 10)) of the
least KL_min. The absolute part is the formula's resolution: N * KL is a
difference of terms up to about N (4 log N + 10) in size, so candidates of
equal KL (several of KL = 0 when the top bins are empty) differ only by
rounding, which that slack (some hundred times the float64 error bound) makes ties.

The float64 arithmetic is the same on every framework, so every backend
computes the same KL bits and picks the same i: each log is of a whole count
>= 1 (``_log``: exponent and mantissa from the bits, then atanh's series by
IEEE +, -, *, / only; within 2 ulp of log, where the libraries' own log
differ in the last place), the float prefix sums are doubling steps of
element-wise adds and the sum over groups is pairwise halving (each library's
cumsum and sum round in their own orders). Integer sums stay the libraries'.

MSE. Candidates shrink (lo, hi) to (lo * f, hi * f), f = float32(1 - k / N),
k = 0 .. N - 1; each candidate's qparams follow the contract and its error is
the float64 sum of (dequantize(quantize(x)) - x)^2. The first candidate
within a relative 1e-9 of the least error wins: ties go to the widest
range, and f = 1 (min/max) is never beaten by more than that tolerance.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["kl_best_bins", "first_minimum", "mse_factors", "RELATIVE_TIE"]

RELATIVE_TIE = 1e-9
ABSOLUTE_TIE = 1e-12  # KL slack per unit of 4 log N + 10: the formula's resolution (see above)
EPSILON = 1e-4  # counts given to a Q bin that is empty where P is not
LOG_EPSILON = math.log(EPSILON)  # one host constant: the same bits on every framework
_SEARCH_ELEMENTS = 1 << 24  # (units, candidates, groups) per step of the KL search
# log(m) = 2 atanh(t), t = (m - 1) / (m + 1), |t| <= 3 - 2 sqrt 2 for m in [sqrt 1/2, sqrt 2]:
# the series to t^21 leaves under 2^-55 of the result
_ATANH = tuple(1.0 / (2 * k + 1) for k in range(11))
_LN2_HI, _LN2_LO = 6.93147180369123816490e-01, 1.90821492927058770002e-10  # fdlibm's split
_MANTISSA, _ONE = (1 << 52) - 1, 1023 << 52


def _log(ops, n):
    """log of float64 n >= 1 (whole counts), by IEEE +, -, *, / only: the same bits on
    NumPy, torch and CuPy (their own log may differ in the last place), within 2 ulp."""
    bits = ops.view_as(n, "int64")
    e = (bits >> 52) - 1023                                   # n = 2^e * m, m in [1, 2)
    m = ops.view_as((bits & _MANTISSA) | _ONE, "float64")
    big = m > 1.4142135623730951
    m = ops.where(big, m * 0.5, m)
    e = ops.astype(e + ops.astype(big, "int64"), "float64")
    t = (m - 1.0) / (m + 1.0)
    t2 = t * t
    series = t2 * 0.0 + _ATANH[-1]
    for c in _ATANH[-2::-1]:
        series = series * t2 + c
    return e * _LN2_HI + (e * _LN2_LO + 2.0 * t * series)



def _plogp(ops, p):
    """p log p with 0 log 0 = 0, for whole float64 p >= 0."""
    return ops.where(p > 0, p * _log(ops, ops.where(p > 0, p, 1.0)), 0.0)


def _scan(ops, a):
    """Inclusive prefix sums along the last axis in one fixed order (doubling steps of
    element-wise adds), where each library's cumsum of floats rounds in its own."""
    n, step = a.shape[-1], 1
    while step < n:
        a = a + ops.concat([a[..., :step] * 0.0, a[..., :-step]], axis=-1)
        step *= 2
    return a


def _total(ops, a):
    """Sums along the last axis in one fixed order (pairwise halving)."""
    while a.shape[-1] > 1:
        half = a.shape[-1] // 2
        pair = a[..., :half] + a[..., half:2 * half]
        a = pair if a.shape[-1] % 2 == 0 else ops.concat([pair, a[..., 2 * half:]], axis=-1)
    return a[..., 0]


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
    plogp = _with_zero(ops, _scan(ops, _plogp(ops, ops.astype(h, "float64"))))
    log_count = _log(ops, ops.arange(1, bins + 2, "float64", hist))  # log k at k - 1
    best = []
    step = max(1, _SEARCH_ELEMENTS // ((bins + 1 - nq) * nq))
    for u0 in range(0, units, step):
        rows = slice(u0, min(units, u0 + step))
        best.append(_kl_rows(ops, h[rows], prefix[rows], nonempty[rows], plogp[rows],
                             cand, starts, ends, log_count))
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


def _kl_rows(ops, h, prefix, nonempty, plogp, cand, starts, ends, log_count):
    total = ops.astype(prefix[:, -1:], "float64")                      # N      (U, 1)
    at_i = _gather(ops, prefix, cand)                                  # M = H[i] (U, C)
    last = _gather(ops, h, cand - 1)
    outliers = ops.astype(prefix[:, -1:] - at_i, "float64")          # mass beyond bin i-1
    p_last = ops.astype(last, "float64") + outliers                   # P[i-1]
    p_log_p = _gather(ops, plogp, cand - 1) + _plogp(ops, p_last)
    mass = ops.astype(_gather(ops, prefix, ends) - _gather(ops, prefix, starts), "float64")
    count = _gather(ops, nonempty, ends) - _gather(ops, nonempty, starts)
    # the outliers join P's last bin (and so the last group); they make it non-empty
    p_mass = _add_last(ops, mass, outliers)
    count = _add_last(ops, count, ops.astype((last == 0) & (outliers > 0), "int64"))
    # log q = log(mass / non-empty bins), or log EPSILON for a group of outliers only
    log_q = _log(ops, ops.where(mass > 0, mass, 1.0)) - log_count[ops.where(count > 0, count, 1) - 1]
    log_q = ops.where(mass > 0, log_q, LOG_EPSILON)
    p_log_q = _total(ops, ops.where(p_mass > 0, p_mass * log_q, 0.0))
    m = ops.astype(at_i, "float64")
    log_n = _log(ops, ops.where(total > 0, total, 1.0))
    kl = (p_log_p - total * log_n + total * _log(ops, ops.where(m > 0, m, 1.0)) - p_log_q) / \
        ops.where(total > 0, total, 1.0)
    kl = ops.where(m > 0, kl, float("inf"))
    return cand[first_minimum(ops, kl, ABSOLUTE_TIE * (4.0 * log_n + 10.0))]


def _add_last(ops, a, extra):
    """a[..., -1] += extra (per unit and candidate), out of place."""
    pad = [a[..., :-1], (a[..., -1] + extra)[..., None]]
    return ops.concat(pad, axis=-1)


def first_minimum(ops, values, slack=None):
    """Index of the first entry within RELATIVE_TIE of each row's minimum, or within the
    row's absolute ``slack`` ((rows, 1), float64) where that is wider."""
    low = ops.amin(values, axis=-1).reshape(-1, 1)
    tie = abs(low) * RELATIVE_TIE
    if slack is not None:
        tie = ops.where(tie > slack, tie, slack)
    near = values <= low + tie
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
