"""An independent, deliberately plain implementation of the numerical contract.

It shares no code with gpuquant: one unit at a time, boolean masks, float32
scalars, np.sort for order statistics. Slow, obvious, and the thing the
library's blocked, threaded and GPU paths are compared with, bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

F32 = np.float32
QRANGES = {(4, True): (-8, 7), (4, False): (0, 15), (8, True): (-128, 127),
           (8, False): (0, 255), (16, True): (-32768, 32767), (16, False): (0, 65535)}


def unit_ids(shape, granularity, axis=0, group_size=None):
    """Flat unit index of every element, and the qparams shape."""
    shape = tuple(shape)
    if granularity == "tensor":
        return np.zeros(shape, np.int64), ()
    if granularity == "channel":
        axis %= len(shape)
        return np.indices(shape)[axis], (shape[axis],)
    lead = shape[:-1]
    k = shape[-1] if shape else 1
    rows = np.arange(math.prod(lead)).reshape(lead + (1,)) if shape else np.zeros((1,), np.int64)
    if granularity == "token":
        return np.broadcast_to(rows, shape).copy() if shape else np.zeros((), np.int64), lead
    ng = -(-k // group_size)
    cols = np.arange(k) // group_size
    return (rows * ng + cols).reshape(shape), lead + (ng,)


def percentile(sorted_vals, p):
    n = sorted_vals.size
    h = (n - 1) * p / 100.0
    i = math.floor(h)
    j = min(i + 1, n - 1)
    a, b = float(sorted_vals[i]), float(sorted_vals[j])
    return F32(a + (h - i) * (b - a))


def qparams(lo, hi, bits, symmetric):
    qmin, qmax = QRANGES[(bits, symmetric)]
    lo, hi = F32(lo), F32(hi)
    with np.errstate(all="ignore"):
        if symmetric:
            scale = F32(max(abs(lo), abs(hi)) / F32(qmax))
        else:
            lo, hi = min(lo, F32(0)), max(hi, F32(0))
            if math.isinf(hi - lo):  # a range wider than float32: halve both ends (exact there)
                scale = F32((hi * F32(0.5) - lo * F32(0.5)) / (F32(qmax - qmin) * F32(0.5)))
            else:
                scale = F32((hi - lo) / F32(qmax - qmin))
        if not (math.isfinite(scale) and scale >= np.finfo(F32).tiny):
            scale = F32(1.0)
        zp = 0 if symmetric else int(min(max(F32(qmin) - np.rint(lo / scale), qmin), qmax))
    return scale, zp


def codes_of(values, scale, zp, bits, symmetric):
    qmin, qmax = QRANGES[(bits, symmetric)]
    inv = F32(F32(1) / F32(scale))
    with np.errstate(all="ignore"):
        v = np.rint(values.astype(F32) * inv)
        v = np.where(np.isnan(v), F32(0), v) + F32(zp)
        return np.clip(v, qmin, qmax).astype(np.int64)


def naive_quantize(x, bits, symmetric, granularity="tensor", axis=0, group_size=None,
                   pct=None):
    """(codes as int64 in x's shape, scale, zero_point) under the contract."""
    x = np.asarray(x).astype(F32)
    ids, pshape = unit_ids(x.shape, granularity, axis, group_size)
    n_units = int(np.prod(pshape, dtype=np.int64))
    scale = np.empty(n_units, F32)
    zp = np.empty(n_units, np.int32)
    codes = np.empty(x.size, np.int64)
    flat = x.reshape(-1)
    order = np.argsort(ids.reshape(-1), kind="stable")
    bounds = np.searchsorted(ids.reshape(-1)[order], np.arange(n_units + 1))
    for u in range(n_units):
        mask = order[bounds[u]: bounds[u + 1]]
        vals = flat[mask]
        if pct is None:
            lo, hi = vals.min(), vals.max()
        else:
            s = np.sort(vals)
            lo, hi = percentile(s, pct[0]), percentile(s, pct[1])
        scale[u], zp[u] = qparams(lo, hi, bits, symmetric)
        codes[mask] = codes_of(vals, scale[u], zp[u], bits, symmetric)
    return codes.reshape(x.shape), scale.reshape(pshape), zp.reshape(pshape)


def naive_dequantize(codes, scale, zp, shape, granularity, axis=0, group_size=None):
    ids, _ = unit_ids(shape, granularity, axis, group_size)
    s = np.asarray(scale, F32).reshape(-1)[ids]
    z = np.asarray(zp).reshape(-1)[ids]
    return (codes - z).astype(F32) * s


def naive_pack(codes, high_first=True):
    """Pack int4 codes one byte at a time."""
    codes = np.asarray(codes)
    flat = codes.reshape(-1, codes.shape[-1]) if codes.ndim else codes.reshape(1, 1)
    out = np.zeros((flat.shape[0], (flat.shape[1] + 1) // 2), np.uint8)
    for r in range(flat.shape[0]):
        for c in range(flat.shape[1]):
            nib = int(flat[r, c]) & 0xF
            first = c % 2 == 0
            shift = 4 if first == high_first else 0
            out[r, c // 2] |= nib << shift
    return out.reshape(codes.shape[:-1] + (out.shape[1],)) if codes.ndim else out.reshape(1)


def naive_kl_best(hist, nq, eps=1e-4):
    """TensorRT's entropy search, one candidate at a time, as gpuquant.calibration.searches states it."""
    hist = np.asarray(hist, np.int64)
    bins = hist.size
    kls = []
    for i in range(nq, bins + 1):
        p = hist[:i].astype(np.float64)
        p[i - 1] += hist[i:].sum()
        group = (np.arange(i) * nq) // i
        q = np.zeros(i)
        for j in range(nq):
            members = (group == j) & (p > 0)
            if members.any():
                q[members] = hist[:i][group == j].sum() / members.sum()
        if hist[:i].sum() == 0:
            kls.append(np.inf)
            continue
        pn, qn = p / p.sum(), q / hist[:i].sum()
        qn[(p > 0) & (q == 0)] = eps / hist[:i].sum()
        nz = pn > 0
        kls.append(float(np.sum(pn[nz] * np.log(pn[nz] / qn[nz]))))
    kls = np.array(kls)
    first = np.flatnonzero(kls <= kls.min() * (1 + 1e-9) + 1e-300)[0]
    return nq + first, kls
