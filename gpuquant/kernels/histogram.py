"""Histograms of calibration data per unit (entropy and the streamed Calibrator).

Unsigned (entropy): |x| over [0, amax], bin = min(floor(|x| * s), bins - 1)
with s = float32(bins / amax). Signed (the Calibrator's streamed histograms,
amax the power-of-two radius R > max|x|): bin = floor(x * s) + bins / 2 with
s = (bins / 2) / R, clipped to [0, bins - 1]; a negative x whose product
underflowed to -0 takes bin bins / 2 - 1, as the exact floor does. With bins a
power of two, s is one too and x * s is exact (gpuquant.calibration.histograms relies on it).
Every step is one float32 rounding, as in the reference
(gpuquant.backends.numpy.calibration.abs_histogram); a value whose scaled
position is not finite (NaN, Inf) is not counted.
"""

import triton
import triton.language as tl


@triton.jit
def unit_histogram_kernel(x_ptr, amax_ptr, counts_ptr, per_row, seg, cols, stride, slices,
                          blocks_per_slice, bins, SIGNED: tl.constexpr, NB: tl.constexpr,
                          BLOCK: tl.constexpr):
    """Add the histogram of one slice of one unit to counts[unit] (int64, atomically).

    Program pid takes unit pid // slices and the blocks_per_slice blocks of
    BLOCK values of its slice pid % slices. Unit addressing as the selection
    kernels: ``seg`` values at (u // per_row) * stride + (u % per_row) * seg.
    """
    pid = tl.program_id(0).to(tl.int64)
    u = pid // slices
    start = (u // per_row) * stride + (u % per_row) * seg
    length = tl.minimum(seg, cols - (u % per_row) * seg).to(tl.int64)
    width = tl.load(amax_ptr + u)
    half = tl.full([], bins // 2, tl.int32).to(tl.float32)
    total = half if SIGNED else tl.full([], bins, tl.int32).to(tl.float32)
    scale = tl.math.div_rn(total, tl.where(width > 0, width, 1.0))
    top = tl.full([], bins - 1, tl.int32).to(tl.float32)
    h = tl.zeros([NB], tl.int64)
    first = (pid % slices) * blocks_per_slice * BLOCK
    for b in range(0, blocks_per_slice):
        offs = first + b * BLOCK + tl.arange(0, BLOCK)
        mask = offs < length
        x = tl.load(x_ptr + start + offs, mask=mask, other=0.0).to(tl.float32)
        scaled = (x if SIGNED else tl.abs(x)) * scale
        ok = mask & (scaled == scaled) & (tl.abs(scaled) != float("inf"))
        pos = tl.math.floor(tl.where(ok, scaled, 0.0))
        if SIGNED:
            pos = tl.where((x < 0) & (pos > -1.0), -1.0, pos) + half
        pos = tl.minimum(tl.maximum(pos, 0.0), top)
        h += tl.histogram(pos.to(tl.int32), NB, mask=ok).to(tl.int64)
    at = tl.arange(0, NB)
    tl.atomic_add(counts_ptr + u * bins + at, h, mask=(h > 0) & (at < bins))
