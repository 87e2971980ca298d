"""The benchmark harness: ``python -m bench [--quick] [--ops ...] [--sizes ...] ...``.

GPU timings use CUDA events through ``triton.testing.do_bench`` (median and
20th/80th percentiles, after warm-up, L2 flushed between runs); CPU timings
use ``time.perf_counter`` over repeats. Inputs are random normals, never
zeros. Every row reports the bytes moved, GB/s, the fraction of a
device-to-device copy measured in the same run, the time relative to one
read of the input, and the speedup against each baseline of the same run.
Rows are appended to ``<out>/bench.csv`` with the machine and versions.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import time
import warnings

import numpy as np

from . import ops as bench_ops

FIELDS = ["timestamp", "machine", "driver", "versions", "op", "impl", "framework", "dtype",
          "rows", "cols", "bytes", "ms", "p20_ms", "p80_ms", "gbps", "copy_gbps",
          "frac_of_copy", "x_one_read", "speedup"]
TARGETS = [  # (op, what, threshold, kind) from the Triton and calibration issues
    ("quant-int4-g128-asym", "fraction of copy bandwidth", 0.85, "frac"),
    ("quant-int4-g128-sym", "fraction of copy bandwidth", 0.85, "frac"),
    ("dequant-int4-g128", "fraction of copy bandwidth", 0.85, "frac"),
    ("quant-int8-channel", "fraction of copy bandwidth", 0.85, "frac"),
    ("minmax-channel", "time / one read", 1.15, "read"),
    ("minmax-group", "time / one read", 1.15, "read"),
    ("quant-int4-g128-asym", "speedup vs torch eager", 5.0, "torch eager"),
    ("quant-int8-channel", "speedup vs torch eager", 5.0, "torch eager"),
    ("dequant-int4-g128", "speedup vs torch eager", 5.0, "torch eager"),
    ("percentile-channel", "speedup vs torch.quantile(dim=1)", 10.0, "torch.quantile(dim=1)"),
    ("percentile-tensor", "speedup vs torch.quantile", 5.0, "torch.quantile"),
    ("entropy-tensor", "milliseconds end to end", 10.0, "ms"),
    # issue 11, evaluated at the largest size run (the sizes: --sizes 16384x16384).
    # "4 reads + 100 us": 100 us is about 0.8 of one read of 2^28 float16 (512 MiB) at
    # the H200's copy speed, so 4.8 reads there; at smaller sizes the bound is looser.
    ("percentile-tensor", "time / one read (4 reads + 100 us)", 4.8, "read"),
    ("percentile-tensor", "milliseconds end to end at 2^28", 1.0, "ms"),
    ("percentile-channel", "time / one read", 6.0, "read"),
    ("percentile-channel", "speedup vs torch.sort(dim=1)", 5.0, "torch.sort(dim=1)"),
    ("percentile-channel", "speedup vs cupy.percentile", 10.0, "cupy.percentile"),
    ("percentile-group", "time / one read", 6.0, "read"),
    # min/max (1 read) + histogram (<= 2 reads, 1 of them the min/max) + a search <= 1 ms
    ("entropy-tensor", "milliseconds end to end at 2^28", 1.25, "ms"),
    # 3x the 10.8 ms an H200 measured at 8192x8192, 100 candidates
    ("mse-channel", "milliseconds end to end", 3.6, "ms"),
]


# ------------------------------------------------------------------ machines
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

    def time(self, fn, repeats: int) -> tuple[float, float, float]:
        """(median, p20, p80) in milliseconds."""
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
        q = np.percentile(times, [20, 80])
        return statistics.median(times), float(q[0]), float(q[1])

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
        return 2 * _nbytes(x) / ms / 1e6

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


def _nbytes(x) -> int:
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


# ------------------------------------------------------------------- running
def run(args) -> list[dict]:
    device = pick_device(args.device, args.framework)
    machine, driver = device.describe()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    vers = versions()
    rows_out = []
    print(f"# {machine} ({driver}); {vers}; {stamp}")
    header = (f"{'op':<22} {'impl':<30} {'dtype':<8} {'shape':<12} {'ms':>9} {'GB/s':>8} "
              f"{'copy%':>6} {'xread':>6} {'speedup':>8}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        r, c = (int(v) for v in size.lower().split("x"))
        for dtype in args.dtypes:
            x = device.make(r, c, dtype)
            copy_gbps = device.copy_bandwidth(x, args.repeats)
            read_ms = _nbytes(x) / (copy_gbps / 2) / 1e6
            print(f"{'copy':<22} {'baseline: copy':<30} {dtype:<8} {size:<12} "
                  f"{2 * _nbytes(x) / copy_gbps / 1e6:9.3f} {copy_gbps:8.1f}")
            for op in args.ops:
                case = bench_ops.build(op, x, device.framework)
                ours = device.time(case.ours, args.repeats)
                if args.memory and device.framework == "numpy":
                    print(f"{op:<22} peak extra memory {peak_extra(case.ours) / _nbytes(x):.2f}x "
                          "the input")
                impls = [("gpuquant", ours)]
                for name, fn in case.baselines.items():
                    try:
                        impls.append((name, device.time(fn, args.repeats)))
                    except Exception as exc:  # noqa: BLE001 - a peer failing costs its row only
                        print(f"{op:<22} baseline {name} failed: {type(exc).__name__}: "
                              f"{str(exc)[:80]}")
                for impl, (ms, p20, p80) in impls:
                    gbps = case.bytes_moved / ms / 1e6
                    speed = ms / ours[0] if impl != "gpuquant" else 1.0
                    row = dict(timestamp=stamp, machine=machine, driver=driver, versions=vers,
                               op=op, impl=impl, framework=device.framework, dtype=dtype,
                               rows=r, cols=c, bytes=case.bytes_moved, ms=round(ms, 4),
                               p20_ms=round(p20, 4), p80_ms=round(p80, 4), gbps=float(f"{gbps:.4g}"),
                               copy_gbps=round(copy_gbps, 2),
                               frac_of_copy=round(gbps / copy_gbps, 3),
                               x_one_read=round(ms / read_ms, 3), speedup=round(speed, 2))
                    rows_out.append(row)
                    label = impl if impl == "gpuquant" else f"baseline: {impl}"
                    print(f"{op:<22} {label[:30]:<30} {dtype:<8} {size:<12} {ms:9.3f} "
                          f"{gbps:8.1f} {100 * gbps / copy_gbps:5.0f}% {ms / read_ms:6.2f} "
                          f"{speed:7.2f}x")
    return rows_out


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


def write_csv(rows: list[dict], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def load_rows(path: str) -> list[dict]:
    """bench.csv rows with their numbers as numbers (what summary() expects)."""
    ints = ("rows", "cols", "bytes")
    floats = ("ms", "p20_ms", "p80_ms", "gbps", "copy_gbps", "frac_of_copy", "x_one_read",
              "speedup")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r.update({k: int(r[k]) for k in ints}, **{k: float(r[k]) for k in floats})
    return rows


def summary(rows: list[dict]) -> list[str]:
    """One line per target of the issues: figure and pass/fail (largest size measured)."""
    lines = []
    for op, what, threshold, kind in TARGETS:
        mine = [r for r in rows if r["op"] == op and r["impl"] == "gpuquant"]
        if kind != "frac" and kind != "read":  # speedups at the sizes where the peer ran
            peers = {r["bytes"] for r in rows if r["op"] == op and r["impl"] == kind}
            mine = [r for r in mine if r["bytes"] in peers] if peers else mine
        if not mine:
            continue
        top = max(mine, key=lambda r: r["bytes"])
        if kind == "ms":
            value, ok = top["ms"], top["ms"] <= threshold
            text = f"{value:.2f} ms (target <= {threshold} ms)"
        elif kind == "frac":
            value, ok = top["frac_of_copy"], top["frac_of_copy"] >= threshold
            text = f"{value:.2f} (target >= {threshold})"
        elif kind == "read":
            value, ok = top["x_one_read"], top["x_one_read"] <= threshold
            text = f"{value:.2f}x (target <= {threshold}x)"
        else:
            peer = [r for r in rows if r["op"] == op and r["impl"] == kind
                    and r["bytes"] == top["bytes"] and r["dtype"] == top["dtype"]]
            if not peer:
                continue
            value = peer[0]["speedup"]
            ok = value >= threshold
            text = f"{value:.1f}x (target >= {threshold}x)"
        lines.append(f"{'PASS' if ok else 'FAIL'}  {op:<22} {what:<34} {text}  "
                     f"[{top['dtype']} {top['rows']}x{top['cols']}]")
    return lines


def parse(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default=",".join(bench_ops.OPS),
                    help="comma-separated: " + ", ".join(bench_ops.OPS))
    ap.add_argument("--sizes", default=None, help="comma-separated ROWSxCOLS (default 8192x8192)")
    ap.add_argument("--dtypes", default=None, help="comma-separated float16,bfloat16,float32")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--framework", choices=("torch", "cupy"), default="torch",
                    help="GPU arrays: torch tensors (default) or CuPy arrays")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (CI)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                    help="folder for bench.csv and the plots")
    ap.add_argument("--no-save", action="store_true", help="print only")
    ap.add_argument("--plots", action="store_true", help="draw PNG plots from the CSV")
    ap.add_argument("--memory", action="store_true",
                    help="CPU only: peak extra memory of each gpuquant call (tracemalloc)")
    args = ap.parse_args(argv)
    args.ops = [o for o in args.ops.split(",") if o]
    unknown = sorted(set(args.ops) - set(bench_ops.OPS))
    if unknown:
        ap.error(f"unknown ops {unknown}; known: {bench_ops.OPS}")
    if args.quick:
        args.sizes = args.sizes or "512x1024"
        args.dtypes = args.dtypes or "float32"
        args.repeats = min(args.repeats, 3)
    args.sizes = (args.sizes or "8192x8192").split(",")
    args.dtypes = (args.dtypes or "float16").split(",")
    return args


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", message=".*quantize_per", category=UserWarning)
    args = parse(argv)
    rows = run(args)
    if not args.no_save:
        csv_path = os.path.join(args.out, "bench.csv")
        write_csv(rows, csv_path)
        print(f"appended {len(rows)} rows to {csv_path}")
        if args.plots:
            from .plots import draw_all

            for path in draw_all(csv_path, args.out):
                print(f"wrote {path}")
    lines = summary(rows)
    if lines and rows[0]["framework"] != "numpy":
        print("\n# targets")
        print("\n".join(lines))
    elif lines:
        print("\n# the bandwidth and speedup targets are GPU targets; this was a CPU run")
    return 0
