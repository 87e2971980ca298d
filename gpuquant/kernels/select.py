"""Exact order statistics by radix selection on float32 keys: no sort of the data.

Each value maps to its order-preserving int32 key (gpuquant.calibration.order.order_key:
``bits ^ ((bits >> 31) & 0x7FFFFFFF)``), and u = key + 2^31 is an unsigned
32-bit key. Three passes find a rank's key: a histogram of u's top 11 bits
(2048 bins), then of the next 11 bits among the values whose top bits match,
then of the last 10 bits. After each pass a cumulative sum picks the bin of
every wanted rank. NaN and infinities fall exactly in bins 0-3 and 2044-2047
of the first pass (their exponent bits are all ones), so the first histogram
also counts the non-finite values, and ranks among finite values are ranks
shifted by the count of bins 0-3.

Ranks and interpolation follow docs/ARCHITECTURE.md 3.3 in float64 on the device. A
percentile p reaches the kernels as the two 32-bit halves of its float64 bits
(a float argument would be float32). A whole tensor keeps nothing but its
histograms (int64, 1 + 4 + 4 of them): each pass recomputes the earlier
passes' choices from them, and a last one-program kernel interpolates.
"""

import triton
import triton.language as tl

from .common import is_finite

BINS = tl.constexpr(2048)
NBAD = tl.constexpr(4)  # bins 0-3 and 2044-2047 of the first pass hold NaN/Inf exactly


@triton.jit
def flip(bits):
    """float32 bits <-> order-preserving int32 key (the map is its own inverse)."""
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def order_key(x):
    """float32 -> int32 key ordered as the values, -0.0 just below +0.0."""
    return flip(x.to(tl.int32, bitcast=True))


@triton.jit
def key_value(key):
    """int32 key -> float32 value."""
    return flip(key).to(tl.float32, bitcast=True)


@triton.jit
def radix_bin(key, PASS: tl.constexpr):
    """Bin of a key in pass 0 (u >> 21), 1 ((u >> 10) & 2047) or 2 (u & 1023)."""
    if PASS == 0:
        return ((key >> 21) & 0x7FF) ^ 0x400
    elif PASS == 1:
        return (key >> 10) & 0x7FF
    else:
        return key & 0x3FF


@triton.jit
def radix_prefix(key, PASS: tl.constexpr):
    """The prefix of u that pass PASS (1 or 2) matches: u >> 21 or u >> 10, as int64."""
    if PASS == 1:
        return (key >> 21).to(tl.int64) + 1024
    else:
        return (key >> 10).to(tl.int64) + 2097152


@triton.jit
def percent(p_hi, p_lo):
    """float64 percentile from the halves of its bits."""
    bits = (tl.full([1], p_hi, tl.int64) << 32) | (tl.full([1], p_lo, tl.int64) & 0xFFFFFFFF)
    return tl.sum(bits.to(tl.float64, bitcast=True), axis=0)


@triton.jit
def rank_pair(n, p):
    """(i, j, t) of docs/ARCHITECTURE.md 3.3 for n values (int64, any shape) and percentile p (float64);
    i and j are clamped to 0 when n = 0."""
    h = (n - 1).to(tl.float64) * p / 100.0
    i = tl.math.floor(h)
    t = h - i
    i = tl.maximum(i.to(tl.int64), 0)
    j = tl.maximum(tl.minimum(i + 1, n - 1), 0)
    return i, j, t


@triton.jit
def lerp(a, b, t):
    """a + t * (b - a) of two float32 values, in float64, rounded to float32."""
    a = a.to(tl.float64)
    return (a + t * (b.to(tl.float64) - a)).to(tl.float32)


@triton.jit
def pick_bin(hist, rank):
    """(bin holding 0-based rank, count below that bin) of a 1-D int64 histogram."""
    c = tl.cumsum(hist, axis=0)
    below = c <= rank
    return tl.sum(below.to(tl.int64), axis=0), tl.max(tl.where(below, c, 0), axis=0)


@triton.jit
def hist_block(x_ptr, offs, mask, p0, p1, p2, p3, h0, h1, h2, h3, PASS: tl.constexpr):
    """Add one block of values to the histograms of pass PASS (int64 accumulators h0..h3).

    Pass 0: h0 counts every value; passes 1 and 2: h_r counts the values whose
    key prefix is p_r.
    """
    key = order_key(tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32))
    bins = radix_bin(key, PASS)
    if PASS == 0:
        h0 += tl.histogram(bins, BINS, mask=mask).to(tl.int64)
    else:
        prefix = radix_prefix(key, PASS)
        h0 += tl.histogram(bins, BINS, mask=mask & (prefix == p0)).to(tl.int64)
        if p1 != p0:  # i and j of a percentile mostly share a prefix: count it once
            h1 += tl.histogram(bins, BINS, mask=mask & (prefix == p1)).to(tl.int64)
        h2 += tl.histogram(bins, BINS, mask=mask & (prefix == p2)).to(tl.int64)
        if p3 != p2:
            h3 += tl.histogram(bins, BINS, mask=mask & (prefix == p3)).to(tl.int64)
    return h0, h1, h2, h3


@triton.jit
def first_ranks(h, total, lo_hi, lo_lo, hi_hi, hi_lo, IGNORE: tl.constexpr):
    """From the pass-0 histogram h of ``total`` values: (non-finite count, n, the ranks
    i and j of the lower and of the upper percentile among all values, the two weights)."""
    at = tl.arange(0, BINS)
    neg_bad = tl.sum(tl.where(at < NBAD, h, 0), axis=0)
    bad = neg_bad + tl.sum(tl.where(at >= BINS - NBAD, h, 0), axis=0)
    n = total - bad if IGNORE else total
    shift = neg_bad if IGNORE else 0  # non-finite values ignored: the negative ones come first
    i0, j0, t0 = rank_pair(n, percent(lo_hi, lo_lo))
    i1, j1, t1 = rank_pair(n, percent(hi_hi, hi_lo))
    return bad, n, i0 + shift, j0 + shift, i1 + shift, j1 + shift, t0, t1


@triton.jit
def tensor_prefixes(hist_ptr, lo_hi, lo_lo, hi_hi, hi_lo, UPTO: tl.constexpr,
                    IGNORE: tl.constexpr):
    """The four ranks' key prefixes after passes 0 .. UPTO - 1 of a whole-tensor selection,
    recomputed from the histograms (pass 0 at hist_ptr, pass 1 at + BINS, pass 2 at
    + 5 BINS, one histogram a rank); then the non-finite count, n and the two weights."""
    at = tl.arange(0, BINS)
    h = tl.load(hist_ptr + at)
    bad, n, r0, r1, r2, r3, t0, t1 = first_ranks(h, tl.sum(h, axis=0), lo_hi, lo_lo, hi_hi,
                                                 hi_lo, IGNORE)
    zero = tl.zeros([], tl.int64)
    p0, r0 = advance(h, zero, r0, 0)
    p1, r1 = advance(h, zero, r1, 0)
    p2, r2 = advance(h, zero, r2, 0)
    p3, r3 = advance(h, zero, r3, 0)
    if UPTO > 1:
        p0, p1, p2, p3, r0, r1, r2, r3 = advance4(hist_ptr + BINS, p0, p1, p2, p3,
                                                  r0, r1, r2, r3, 11)
    if UPTO > 2:
        p0, p1, p2, p3, r0, r1, r2, r3 = advance4(hist_ptr + 5 * BINS, p0, p1, p2, p3,
                                                  r0, r1, r2, r3, 10)
    return p0, p1, p2, p3, bad, n, t0, t1


@triton.jit
def advance4(hist_ptr, p0, p1, p2, p3, r0, r1, r2, r3, WIDTH: tl.constexpr):
    """Advance the four ranks with the histograms of one pass (one a rank, from hist_ptr;
    a rank sharing its partner's prefix uses the partner's, see hist_block)."""
    at = tl.arange(0, BINS)
    q1 = tl.where(p1 == p0, 0, 1)
    q3 = tl.where(p3 == p2, 2, 3)
    a0, r0 = advance(tl.load(hist_ptr + at), p0, r0, WIDTH)
    a1, r1 = advance(tl.load(hist_ptr + q1 * BINS + at), p1, r1, WIDTH)
    a2, r2 = advance(tl.load(hist_ptr + 2 * BINS + at), p2, r2, WIDTH)
    a3, r3 = advance(tl.load(hist_ptr + q3 * BINS + at), p3, r3, WIDTH)
    return a0, a1, a2, a3, r0, r1, r2, r3


@triton.jit
def key_histogram_kernel(x_ptr, n, hist_ptr, blocks_per_prog, lo_hi, lo_lo, hi_hi, hi_lo,
                         PASS: tl.constexpr, IGNORE: tl.constexpr, BLOCK: tl.constexpr):
    """Pass PASS of a whole-tensor selection: atomically add this program's histograms.

    Each program first recomputes the prefixes of the earlier passes from their
    histograms (a few cumulative sums of 2048 bins), so that no select step
    runs between passes. Pass 0: one histogram of every value; passes 1 and
    2: one per rank, over the values whose key prefix is the rank's.
    """
    pid = tl.program_id(0)
    progs = tl.num_programs(0)
    if PASS > 0:
        p0, p1, p2, p3, _, _, _, _ = tensor_prefixes(hist_ptr, lo_hi, lo_lo, hi_hi, hi_lo,
                                                     PASS, IGNORE)
    else:
        p0 = tl.zeros([], tl.int64)
        p1 = p0
        p2 = p0
        p3 = p0
    h0 = tl.zeros([BINS], tl.int64)
    h1 = tl.zeros([BINS], tl.int64)
    h2 = tl.zeros([BINS], tl.int64)
    h3 = tl.zeros([BINS], tl.int64)
    for b in range(0, blocks_per_prog):
        offs = (b * progs + pid).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        h0, h1, h2, h3 = hist_block(x_ptr, offs, offs < n, p0, p1, p2, p3, h0, h1, h2, h3,
                                    PASS)
    at = tl.arange(0, BINS)
    out = hist_ptr + (PASS > 0) * BINS + (PASS > 1) * 4 * BINS
    tl.atomic_add(out + at, h0, mask=h0 > 0)
    if PASS > 0:
        tl.atomic_add(out + BINS + at, h1, mask=h1 > 0)
        tl.atomic_add(out + 2 * BINS + at, h2, mask=h2 > 0)
        tl.atomic_add(out + 3 * BINS + at, h3, mask=h3 > 0)


@triton.jit
def tensor_select_kernel(hist_ptr, out_ptr, bad_ptr, lo_hi, lo_lo, hi_hi, hi_lo,
                         IGNORE: tl.constexpr):
    """One program, after the three passes: the float32 (lower, upper) percentiles (0 and 0
    when no value counts) and the non-finite count."""
    p0, p1, p2, p3, bad, n, t0, t1 = tensor_prefixes(hist_ptr, lo_hi, lo_lo, hi_hi, hi_lo, 3,
                                                     IGNORE)
    lo = lerp(prefix_value(p0), prefix_value(p1), t0)
    hi = lerp(prefix_value(p2), prefix_value(p3), t1)
    tl.store(out_ptr + 0, tl.where(n > 0, lo, 0.0))
    tl.store(out_ptr + 1, tl.where(n > 0, hi, 0.0))
    tl.store(bad_ptr, bad)


@triton.jit
def unit_histograms(x_ptr, start, length, p0, p1, p2, p3, PASS: tl.constexpr,
                    BLOCK: tl.constexpr):
    """The four histograms of pass PASS over one unit of ``length`` values at ``start``."""
    h0 = tl.zeros([BINS], tl.int64)
    h1 = tl.zeros([BINS], tl.int64)
    h2 = tl.zeros([BINS], tl.int64)
    h3 = tl.zeros([BINS], tl.int64)
    for off in range(0, length, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        h0, h1, h2, h3 = hist_block(x_ptr + start, offs, offs < length, p0, p1, p2, p3,
                                    h0, h1, h2, h3, PASS)
    return h0, h1, h2, h3


@triton.jit
def advance(h, prefix, rank, WIDTH: tl.constexpr):
    """(prefix extended by the bin of rank, rank within that bin)."""
    b, below = pick_bin(h, rank)
    return (prefix << WIDTH) | b, rank - below


@triton.jit
def unit_radix_select_kernel(x_ptr, lo_ptr, hi_ptr, bad_ptr, per_row, seg, cols, stride,
                             lo_hi, lo_lo, hi_hi, hi_lo,
                             IGNORE: tl.constexpr, BLOCK: tl.constexpr):
    """Percentiles of one large unit per program: three histogram passes over the unit."""
    u = tl.program_id(0).to(tl.int64)
    start = (u // per_row) * stride + (u % per_row) * seg
    length = tl.minimum(seg, cols - (u % per_row) * seg).to(tl.int64)
    zero = tl.zeros([], tl.int64)
    h, _, _, _ = unit_histograms(x_ptr, start, length, zero, zero, zero, zero, 0, BLOCK)
    bad, n, r0, r1, r2, r3, t0, t1 = first_ranks(h, length, lo_hi, lo_lo, hi_hi, hi_lo, IGNORE)
    p0, r0 = advance(h, zero, r0, 0)
    p1, r1 = advance(h, zero, r1, 0)
    p2, r2 = advance(h, zero, r2, 0)
    p3, r3 = advance(h, zero, r3, 0)
    for step in tl.static_range(1, 3):
        h0, h1, h2, h3 = unit_histograms(x_ptr, start, length, p0, p1, p2, p3, step, BLOCK)
        h1 = tl.where(p1 == p0, h0, h1)  # a shared prefix was counted once (hist_block)
        h3 = tl.where(p3 == p2, h2, h3)
        width = 11 if step == 1 else 10
        p0, r0 = advance(h0, p0, r0, width)
        p1, r1 = advance(h1, p1, r1, width)
        p2, r2 = advance(h2, p2, r2, width)
        p3, r3 = advance(h3, p3, r3, width)
    lo = lerp(prefix_value(p0), prefix_value(p1), t0)
    hi = lerp(prefix_value(p2), prefix_value(p3), t1)
    tl.store(lo_ptr + u, tl.where(n > 0, lo, 0.0))
    tl.store(hi_ptr + u, tl.where(n > 0, hi, 0.0))
    tl.store(bad_ptr + u, bad.to(tl.int32))


@triton.jit
def prefix_value(u):
    """The float32 of a complete unsigned key u (int64)."""
    return key_value((u - 2147483648).to(tl.int32))


@triton.jit
def unit_sort_select_kernel(x_ptr, lo_ptr, hi_ptr, bad_ptr, units, per_row, seg, cols, stride,
                            lo_hi, lo_lo, hi_hi, hi_lo,
                            IGNORE: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_L: tl.constexpr):
    """Percentiles of BLOCK_U units that fit one program: load once, sort the keys, pick.

    Unit u is ``seg`` values (the last of a row may be shorter) at
    (u // per_row) * stride + (u % per_row) * seg.
    """
    u = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    start = (u // per_row) * stride + (u % per_row) * seg
    length = tl.minimum(seg, cols - (u % per_row) * seg)
    col = tl.arange(0, BLOCK_L)
    mask = (u < units)[:, None] & (col[None, :] < length[:, None])
    x = tl.load(x_ptr + start[:, None] + col[None, :], mask=mask, other=0.0).to(tl.float32)
    finite = is_finite(x)
    tl.store(bad_ptr + u, tl.sum((mask & ~finite).to(tl.int32), axis=1), mask=u < units)
    valid = mask & finite if IGNORE else mask
    n = tl.sum(valid.to(tl.int64), axis=1)
    keys = tl.sort(tl.where(valid, order_key(x), 2147483647), dim=1)
    lo = sorted_percentile(keys, col, n, percent(lo_hi, lo_lo))
    tl.store(lo_ptr + u, lo, mask=u < units)
    hi = sorted_percentile(keys, col, n, percent(hi_hi, hi_lo))
    tl.store(hi_ptr + u, hi, mask=u < units)


@triton.jit
def sorted_percentile(keys, col, n, p):
    """Percentile p of each row of sorted keys (BLOCK_U, BLOCK_L) with n values a row."""
    i, j, t = rank_pair(n, p)
    a = tl.sum(tl.where(col[None, :] == i[:, None], keys, 0), axis=1)
    b = tl.sum(tl.where(col[None, :] == j[:, None], keys, 0), axis=1)
    return tl.where(n > 0, lerp(key_value(a), key_value(b), t), 0.0)
