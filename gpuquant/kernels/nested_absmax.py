"""Kernels of NF4's double quantization (bitsandbytes' compress_statistics=True).

The absmax of the NF4 blocks (float32, on the device) are offset by their mean and
coded with bitsandbytes' 8-bit dynamic map, 256 a block (gpuquant/formats/reference.py,
``nested_mean``, ``nest_absmax``, ``unnest_absmax``; docs/ARCHITECTURE.md, NF4):

  mean_kernel    one program: the float64 sum of rows of ROW values, each summed by
                 halving (pairs (2i, 2i + 1) first), the row sums added in order; the
                 offset is float32(sum / n)
  nest_kernel    one program per 256 absmax: d = absmax - offset, m = max |d| (NaN
                 skipped), codes LUT[trunc(float32((d * (1 / m) + 1) / 2 * 65535 + 1/2))]
  unnest_kernel  absmax = MAP[code] * m + offset (two roundings)
"""

import triton
import triton.language as tl

NESTED = tl.constexpr(256)  # bitsandbytes' nested blocksize


@triton.jit
def _halve(v):
    a, b = tl.split(tl.reshape(v, (v.shape[0] // 2, 2)))
    return a + b


@triton.jit
def mean_kernel(a_ptr, out_ptr, n, ROW: tl.constexpr, LOG_ROW: tl.constexpr):
    offs = tl.arange(0, ROW)
    total = tl.zeros((1,), dtype=tl.float64)
    for start in range(0, n, ROW):
        v = tl.load(a_ptr + start + offs, mask=start + offs < n, other=0.0).to(tl.float64)
        for _ in tl.static_range(LOG_ROW):
            v = _halve(v)
        total += v
    count = tl.zeros((1,), dtype=tl.float64) + n
    # float64 `/` is IEEE (div.rn.f64); tl.math.div_rn takes float32 only
    tl.store(out_ptr + tl.arange(0, 1), (total / count).to(tl.float32))


@triton.jit
def nest_kernel(a_ptr, off_ptr, lut_ptr, q_ptr, nested_ptr, n):
    pid = tl.program_id(0)
    offs = pid * NESTED + tl.arange(0, NESTED)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=0.0)
    off = tl.load(off_ptr + tl.zeros((NESTED,), dtype=tl.int32))
    d = tl.where(mask, a - off, 0.0)
    mag = tl.abs(d)
    m = tl.max(tl.where(mag == mag, mag, 0.0), axis=0)  # a NaN is skipped, as bitsandbytes'
    tl.store(nested_ptr + pid, m)
    inv = tl.math.div_rn(tl.full((NESTED,), 1.0, tl.float32), m + tl.zeros_like(d))
    v = d * inv
    v = tl.where(v < -1.0, -1.0, tl.where(v > 1.0, 1.0, v))  # NaN stays NaN
    t = (v + 1.0) * 0.5
    f = (t.to(tl.float64) * 65535.0 + 0.5).to(tl.float32)  # exact in float64: one rounding
    idx = tl.where(f == f, f, 0.0).to(tl.int32)
    code = tl.load(lut_ptr + idx, mask=mask, other=0)
    code = tl.where(m == 0.0, 0, code.to(tl.int32))
    tl.store(q_ptr + offs, code.to(tl.uint8), mask=mask)


@triton.jit
def unnest_kernel(q_ptr, nested_ptr, off_ptr, map_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    q = tl.load(q_ptr + offs, mask=mask, other=0).to(tl.int32)
    s = tl.load(nested_ptr + offs // NESTED, mask=mask, other=0.0)
    off = tl.load(off_ptr + tl.zeros((BLOCK,), dtype=tl.int32))
    value = tl.load(map_ptr + q, mask=mask, other=0.0)
    tl.store(out_ptr + offs, value * s + off, mask=mask)


__all__ = ["mean_kernel", "nest_kernel", "unnest_kernel"]
