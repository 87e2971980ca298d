"""Where the benchmark's inputs live and how to time there.

GPU timings use CUDA events: ``triton.testing.do_bench`` (median and
20th/80th percentiles, after warm-up, L2 flushed between runs) for one call,
and events around a loop of calls for the end-to-end time of a repeated
call. CPU timings use ``time.perf_counter`` over repeats.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np


class Device:
    """Where the inputs live and how to time there."""

    def __init__(self, kind: str, framework: str):
        self.kind, self.framework = kind, framework

    def make(self, rows: int, cols: int, dtype: str, seed: int = 0):
        x = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
        if self.framework == "numpy":
            return x.astype(dtype)
        if self.framework == "cupy":
            import cupy

            return cupy.asarray(x.astype(dtype))
        import torch

        return torch.from_numpy(x).to(device="cuda", dtype=getattr(torch, dtype))

    def time(self, fn, repeats: int, calls: int = 1) -> tuple[float, float, float]:
        """(median, p20, p80) in milliseconds of one call; ``calls`` > 1: end to end in a loop."""
        if calls > 1:
            return self._time_loop(fn, repeats, calls)
        if self.kind == "cuda":
            from triton.testing import do_bench

            med, p20, p80 = do_bench(fn, warmup=10, rep=max(20, repeats * 10),
                                     quantiles=[0.5, 0.2, 0.8])
            return float(med), float(p20), float(p80)
        fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return _quantiles(times)

    def _time_loop(self, fn, repeats: int, calls: int) -> tuple[float, float, float]:
        """Host + device time per call of ``calls`` calls in a row (events around the loop).

        The device is idle when each loop starts, so a call that costs more host
        time than device time is timed by its host time, as a user sees it.
        """
        for _ in range(3):
            fn()
        times = []
        for _ in range(max(repeats, 5)):
            if self.kind == "cuda":
                start, stop, sync, elapsed = self._events()
                sync()
                start.record()
                for _ in range(calls):
                    fn()
                stop.record()
                stop.synchronize()
                times.append(elapsed(start, stop) / calls)
            else:
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                times.append((time.perf_counter() - t0) * 1e3 / calls)
        return _quantiles(times)

    def _events(self):
        """(start event, stop event, device sync, elapsed ms) of this framework."""
        if self.framework == "cupy":
            import cupy

            return (cupy.cuda.Event(), cupy.cuda.Event(), cupy.cuda.Device().synchronize,
                    cupy.cuda.get_elapsed_time)
        import torch

        return (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True),
                torch.cuda.synchronize, lambda a, b: a.elapsed_time(b))

    def copy_bandwidth(self, x, repeats: int) -> float:
        """GB/s of a device-to-device (or memory-to-memory) copy of x, bytes read + written."""
        if self.framework == "numpy":
            y = np.empty_like(x)
            ms = self.time(lambda: np.copyto(y, x), repeats)[0]
        else:
            y = x.copy() if self.framework == "cupy" else x.clone()
            fn = (lambda: y.__setitem__(Ellipsis, x)) if self.framework == "cupy" \
                else (lambda: y.copy_(x))
            ms = self.time(fn, repeats)[0]
        return 2 * nbytes(x) / ms / 1e6

    def describe(self) -> tuple[str, str]:
        if self.kind == "cuda":
            try:
                import torch

                name = torch.cuda.get_device_name()
                driver = f"cuda {torch.version.cuda}"
            except ImportError:
                import cupy

                props = cupy.cuda.runtime.getDeviceProperties(0)
                name = props["name"].decode()
                driver = f"cuda runtime {cupy.cuda.runtime.runtimeGetVersion()}"
            return name, driver
        return f"{platform.processor() or platform.machine()} x{os.cpu_count()}", "-"


def _quantiles(times: list[float]) -> tuple[float, float, float]:
    q = np.percentile(times, [20, 80])
    return statistics.median(times), float(q[0]), float(q[1])


def nbytes(x) -> int:
    return int(x.nbytes) if hasattr(x, "nbytes") else int(x.numel() * x.element_size())


def peak_extra(fn) -> int:
    """Peak bytes NumPy allocated during fn() (tracemalloc sees NumPy's buffers)."""
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def versions() -> str:
    found = [f"python {platform.python_version()}", f"numpy {np.__version__}"]
    for name in ("gpuquant", "torch", "triton", "cupy", "bitsandbytes"):
        try:
            module = __import__(name)
            found.append(f"{name} {getattr(module, '__version__', '?')}")
        except Exception:  # noqa: BLE001 - absent or broken: not part of this run
            pass
    return "; ".join(found)


def pick_device(kind: str, framework: str) -> Device:
    if kind == "cpu":
        return Device("cpu", "numpy")
    has_cuda = False
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        pass
    if framework == "cupy" or (not has_cuda and kind != "cpu"):
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                return Device("cuda", "cupy")
        except Exception:  # noqa: BLE001 - no CuPy or no device
            pass
    if has_cuda:
        return Device("cuda", "torch")
    if kind == "cuda":
        raise SystemExit("--device cuda: no CUDA device found (torch or CuPy)")
    return Device("cpu", "numpy")
