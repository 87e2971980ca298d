"""CPU figures of the NumPy reference against PyTorch and a straightforward NumPy composite.

    python bench/cpu_reference.py [--size 8192] [--repeats 5]

Input: a float32 (size x size) matrix of random normals. Times are the
median of ``--repeats`` runs with time.perf_counter (CPU work is synchronous),
ours and the baseline alternating so both see the same machine noise.
Peak extra memory is measured with tracemalloc, which sees NumPy's buffers.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import tracemalloc
import warnings

import numpy as np

import gpuquant as gq


def timed_pair(ours, baseline, repeats):
    """Medians of both, run alternately so that both see the same machine noise."""
    ours()
    baseline()
    a, b = [], []
    for _ in range(repeats):
        for fn, times in ((ours, a), (baseline, b)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def peak_extra(fn) -> int:
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def naive_int4_group(x, group=128):
    """divide, rint, clip, astype, shift and or: the straightforward NumPy composite."""
    g = x.reshape(x.shape[0], -1, group)
    lo = np.minimum(g.min(axis=2, keepdims=True), 0)
    hi = np.maximum(g.max(axis=2, keepdims=True), 0)
    scale = (hi - lo) / 15
    scale[scale == 0] = 1
    zp = np.clip(-np.rint(lo / scale), 0, 15)
    q = np.clip(np.rint(g / scale) + zp, 0, 15).astype(np.uint8).reshape(x.shape[0], -1)
    return (q[:, 0::2] << 4) | q[:, 1::2], scale, zp


def naive_dequant(qt):
    """shift, mask, interleave, subtract, multiply: the straightforward NumPy composite."""
    p = qt.data
    q = np.empty((p.shape[0], p.shape[1] * 2), np.float32)
    q[:, 0::2] = p >> 4
    q[:, 1::2] = p & 15
    g = q.reshape(p.shape[0], -1, 128)
    return ((g - qt.zero_point[..., None]) * qt.scale[..., None]).reshape(q.shape)


def main() -> None:
    warnings.filterwarnings("ignore", message=".*quantize_per", category=UserWarning)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    n = args.size
    x = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    mb = x.nbytes / 2**20
    rows = []

    per_channel = gq.QuantConfig.int8_per_channel()
    group = gq.QuantConfig.int4_per_group(128)
    qt_pc = gq.quantize(x, per_channel)
    qt_g = gq.quantize(x, group)
    ours_g, naive_g = timed_pair(lambda: gq.quantize(x, group), lambda: naive_int4_group(x),
                                 args.repeats)
    ours_dq_g, naive_dq_g = timed_pair(lambda: qt_g.dequantize(), lambda: naive_dequant(qt_g),
                                       args.repeats)
    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        xt = torch.from_numpy(x)
        scale = torch.from_numpy(np.asarray(qt_pc.scale)).double()
        zp = torch.zeros(n, dtype=torch.int64)
        ours_pc, torch_pc = timed_pair(
            lambda: gq.quantize(x, per_channel),
            lambda: torch.quantize_per_channel(xt, scale, zp, 0, torch.qint8), args.repeats)
        tq = torch.quantize_per_channel(xt, scale, zp, 0, torch.qint8)
        ours_dq, torch_dq = timed_pair(lambda: qt_pc.dequantize(), lambda: tq.dequantize(),
                                       args.repeats)
        versions = f"torch {torch.__version__}"
    except ImportError:
        ours_pc, torch_pc = timed_pair(lambda: gq.quantize(x, per_channel), lambda: None, 1)
        ours_dq, torch_dq = timed_pair(lambda: qt_pc.dequantize(), lambda: None, 1)
        torch_pc = torch_dq = float("nan")
        versions = "torch missing"

    rows.append(("int8 per-channel quantize", ours_pc, "torch.quantize_per_channel", torch_pc, 1.5))
    rows.append(("int4 group-128 quantize+pack", ours_g, "NumPy composite", naive_g, 3.0))
    rows.append(("int8 per-channel dequantize", ours_dq, "torch dequantize()", torch_dq, 1.0))
    rows.append(("int4 group-128 dequantize", ours_dq_g, "NumPy composite", naive_dq_g, None))

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy "
          f"{np.__version__}, {versions}, input float32 {n}x{n} ({mb:.0f} MiB), "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"{'operation':<30} {'gpuquant ms':>12} {'baseline':<28} {'baseline ms':>12} "
          f"{'speedup':>8} {'target':>7}")
    for name, ours, base_name, base, target in rows:
        speed = base / ours if base == base else float("nan")
        verdict = "" if target is None else ("pass" if speed >= target else "FAIL")
        print(f"{name:<30} {ours * 1e3:12.1f} {base_name:<28} {base * 1e3:12.1f} "
              f"{speed:8.2f} {'' if target is None else f'>={target:g}x':>7} {verdict}")
    extra = peak_extra(lambda: gq.quantize(x, group)) / x.nbytes
    extra_pc = peak_extra(lambda: gq.quantize(x, per_channel)) / x.nbytes
    print(f"peak extra memory: int4 group quantize {extra:.2f}x input, int8 per-channel "
          f"{extra_pc:.2f}x input (target <= 2x)")


if __name__ == "__main__":
    main()
