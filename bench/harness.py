"""The benchmark harness: ``python -m bench [--quick] [--ops ...] [--sizes ...] ...``.

GPU timings use CUDA events (bench/machine.py): ``triton.testing.do_bench``
(median and 20th/80th percentiles, after warm-up, L2 flushed between runs)
for one call; events around a loop of calls for the end-to-end time of a
small repeated call. CPU timings use ``time.perf_counter`` over repeats.
Inputs are random normals, never zeros. Every row reports the bytes moved,
GB/s, the fraction of a device-to-device copy measured in the same run, the
time relative to one read of the input, and the speedup against each
baseline of the same run. Rows are appended to ``<out>/bench.csv`` with the
machine, versions and a timestamp. ``--host-overhead`` prints the host work
of a repeated call instead (bench/host_overhead.py).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import warnings

from . import ops as bench_ops
from .machine import nbytes, peak_extra, pick_device, versions

FIELDS = ["timestamp", "machine", "driver", "versions", "op", "impl", "framework", "dtype",
          "rows", "cols", "bytes", "ms", "p20_ms", "p80_ms", "gbps", "copy_gbps",
          "frac_of_copy", "x_one_read", "speedup"]
# (op, what, threshold, kind). kind: "frac" (fraction of copy, at least), "read" (time over
# one read, at most), "ms" / "us" (time per call, at most), else a baseline's impl name
# (speedup against it, at least). Issue 9's GPU targets, then the calibration issues'.
TARGETS = [
    ("quant-int4-g128-sym", "fraction of copy bandwidth", 0.80, "frac"),
    ("quant-int4-g128-asym", "fraction of copy bandwidth", 0.80, "frac"),
    ("quant-int8-channel", "fraction of copy bandwidth", 0.80, "frac"),
    ("dynamic-per-token", "fraction of copy bandwidth", 0.80, "frac"),
    ("dequant-int4-g128", "fraction of copy bandwidth", 0.85, "frac"),
    ("dequant-int8-channel", "fraction of copy bandwidth", 0.85, "frac"),
    ("minmax-channel", "time / one read", 1.15, "read"),
    ("minmax-group", "time / one read", 1.15, "read"),
    ("quant-int4-g128-sym", "speedup vs torch.compile", 2.0, "torch.compile"),
    ("quant-int4-g128-asym", "speedup vs torch.compile", 2.0, "torch.compile"),
    ("dequant-int4-g128", "speedup vs torch.compile", 2.0, "torch.compile"),
    ("quant-int4-g128-sym", "speedup vs bitsandbytes", 2.0, "bitsandbytes quantize_4bit"),
    ("quant-int4-g128-asym", "speedup vs bitsandbytes", 2.0, "bitsandbytes quantize_4bit"),
    ("dequant-int4-g128", "speedup vs bitsandbytes", 1.5, "bitsandbytes dequantize_4bit"),
    ("dynamic-per-token", "speedup vs torch.compile", 1.2, "torch.compile"),
    ("dynamic-per-token-small", "us per call, end to end (16x4096)", 17.0, "us"),
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
_ABSOLUTE = ("frac", "read", "ms", "us")


# ------------------------------------------------------------------- running
def run(args, sink=None) -> list[dict]:
    """Measure every op at every size and dtype; ``sink(rows)`` gets each case's rows as they
    come (the CSV is appended to case by case, so a run stopped midway keeps its rows)."""
    device = pick_device(args.device, args.framework)
    machine, driver = device.describe()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    meta = dict(timestamp=stamp, machine=machine, driver=driver, versions=versions(),
                framework=device.framework)
    print(f"# {machine} ({driver}); {meta['versions']}; {stamp}")
    header = (f"{'op':<24} {'impl':<30} {'dtype':<8} {'shape':<12} {'ms':>9} {'GB/s':>8} "
              f"{'copy%':>6} {'xread':>6} {'speedup':>8}")
    print(header)
    print("-" * len(header))
    rows_out, fixed_done = [], set()
    for size in args.sizes:
        r, c = (int(v) for v in size.lower().split("x"))
        for dtype in args.dtypes:
            x = device.make(r, c, dtype)
            copy_gbps = device.copy_bandwidth(x, args.repeats)
            print(f"{'copy':<24} {'baseline: copy':<30} {dtype:<8} {size:<12} "
                  f"{2 * nbytes(x) / copy_gbps / 1e6:9.3f} {copy_gbps:8.1f}")
            for op in args.ops:
                if (op, dtype) in fixed_done:
                    continue  # an op with its own input shape is measured once per dtype
                case = bench_ops.build(op, x, device.framework)
                if case.shape:
                    fixed_done.add((op, dtype))
                rows = measure(device, case, args, dict(meta, dtype=dtype), shape=(r, c),
                               copy_gbps=copy_gbps)
                if sink is not None:
                    sink(rows)
                rows_out += rows
    return rows_out


def measure(device, case, args, meta: dict, shape, copy_gbps: float) -> list[dict]:
    """Rows of gpuquant and each baseline of one case, printed as they come."""
    rows, cols = case.shape or shape
    in_bytes = rows * cols * bench_ops.ITEMSIZE[meta["dtype"]]
    read_ms = in_bytes / (copy_gbps / 2) / 1e6
    ours = device.time(case.ours, args.repeats, case.calls)
    if args.memory and device.framework == "numpy":
        print(f"{case.op:<24} peak extra memory {peak_extra(case.ours) / in_bytes:.2f}x "
              "the input")
    impls = [("gpuquant", ours)]
    for name, fn in case.baselines.items():
        try:
            impls.append((name, device.time(fn, args.repeats, case.calls)))
        except Exception as exc:  # noqa: BLE001 - a peer failing costs its row only
            print(f"{case.op:<24} baseline {name} failed: {type(exc).__name__}: {str(exc)[:80]}")
    out = []
    for impl, (ms, p20, p80) in impls:
        gbps = case.bytes_moved / ms / 1e6
        speed = ms / ours[0] if impl != "gpuquant" else 1.0
        out.append(dict(meta, op=case.op, impl=impl, rows=rows, cols=cols, bytes=case.bytes_moved,
                        ms=round(ms, 4), p20_ms=round(p20, 4), p80_ms=round(p80, 4),
                        gbps=float(f"{gbps:.4g}"), copy_gbps=round(copy_gbps, 2),
                        frac_of_copy=round(gbps / copy_gbps, 3), x_one_read=round(ms / read_ms, 3),
                        speedup=round(speed, 2)))
        label = impl if impl == "gpuquant" else f"baseline: {impl}"
        print(f"{case.op:<24} {label[:30]:<30} {meta['dtype']:<8} {f'{rows}x{cols}':<12} "
              f"{ms:9.4f} {gbps:8.1f} {100 * gbps / copy_gbps:5.0f}% {ms / read_ms:6.2f} "
              f"{speed:7.2f}x")
    return out


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
    """One line per target: PASS, FAIL or MISS (not measured), the figure and its baseline.

    Each target is judged at the largest input measured (for a speedup: the largest
    where the peer ran too).
    """
    lines = []
    for op, what, threshold, kind in TARGETS:
        status, text = judge(rows, op, threshold, kind)
        lines.append(f"{status}  {op:<24} {what:<36} {text}")
    return lines


def judge(rows: list[dict], op: str, threshold: float, kind: str) -> tuple[str, str]:
    """(PASS | FAIL | MISS, the figure against its target and baseline) of one target."""
    mine = [r for r in rows if r["op"] == op and r["impl"] == "gpuquant"]
    peers = [r for r in rows if r["op"] == op and r["impl"] == kind]
    if kind not in _ABSOLUTE:  # speedups at the sizes where the peer ran
        keys = {(r["bytes"], r["dtype"]) for r in peers}
        mine = [r for r in mine if (r["bytes"], r["dtype"]) in keys]
    if not mine:
        missing = f"baseline {kind!r}" if kind not in _ABSOLUTE and not peers else "gpuquant"
        return "MISS", f"not measured in this run (no {missing} row)"
    top = max(mine, key=lambda r: r["bytes"])
    where = f"  [{top['dtype']} {top['rows']}x{top['cols']}]"
    if kind == "frac":
        value = top["frac_of_copy"]
        ok = value >= threshold
        text = (f"{value:.2f} of copy (target >= {threshold}; baseline: copy "
                f"{top['copy_gbps']:.0f} GB/s, gpuquant {top['gbps']:.0f} GB/s)")
    elif kind == "read":
        value = top["x_one_read"]
        ok = value <= threshold
        text = (f"{value:.2f}x one read (target <= {threshold}x; baseline: one read at "
                f"copy/2 = {top['copy_gbps'] / 2:.0f} GB/s; gpuquant {top['ms']:.4f} ms)")
    elif kind in ("ms", "us"):
        unit = 1.0 if kind == "ms" else 1e3
        value = top["ms"] * unit
        ok = value <= threshold
        same = [r for r in rows if r["op"] == op and r["impl"] != "gpuquant"
                and r["bytes"] == top["bytes"] and r["dtype"] == top["dtype"]]
        beside = "; ".join(f"{r['impl']} {r['ms'] * unit:.2f} {kind}" for r in same)
        text = f"{value:.2f} {kind} (target <= {threshold} {kind}; beside it: {beside or 'none'})"
    else:
        peer = next(r for r in peers if (r["bytes"], r["dtype"]) == (top["bytes"], top["dtype"]))
        value = peer["ms"] / top["ms"]
        ok = value >= threshold
        text = (f"{value:.2f}x (target >= {threshold}x; baseline: {kind} {peer['ms']:.4f} ms, "
                f"gpuquant {top['ms']:.4f} ms)")
    return ("PASS" if ok else "FAIL"), text + where


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
    ap.add_argument("--tuning", metavar="JSON", default=None,
                    help="launch-parameter table to use instead of the package's tuning.json "
                         "(what `python -m bench.tune --out` wrote)")
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="--host-overhead: seconds of repeated calls timed per operation")
    ap.add_argument("--host-overhead", action="store_true",
                    help="print the host work of one repeated call as JSON (python calls, "
                         "host us, launches); on the CPU under the Triton interpreter with "
                         "launches recorded, or with --device cuda on a GPU")
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


def use_tuning_table(path: str) -> None:
    """Make the launchers read the table at ``path`` (and forget launch plans made before)."""
    from gpuquant.backends.triton import tuning
    from gpuquant.core.plan import clear

    table = tuning.use_table(path)
    clear()
    print(f"# launch parameters from {path} (measured on: "
          f"{table.get('measured_on') or 'not measured'})")


def main(argv=None) -> int:
    warnings.filterwarnings("ignore", message=".*quantize_per", category=UserWarning)
    args = parse(argv)
    if args.host_overhead:
        from .host_overhead import main as host_overhead

        return host_overhead(["--device", "cuda" if args.device == "cuda" else "cpu",
                              "--seconds", str(args.seconds)])
    if args.tuning:
        use_tuning_table(args.tuning)
    csv_path = os.path.join(args.out, "bench.csv")
    rows = run(args, sink=None if args.no_save else lambda new: write_csv(new, csv_path))
    if not args.no_save:
        print(f"appended {len(rows)} rows to {csv_path}")
        if args.plots:
            from .plots import draw_all

            for path in draw_all(csv_path, args.out):
                print(f"wrote {path}")
    if rows and rows[0]["framework"] != "numpy":
        print("\n# targets (status, op, what, figure and baseline)")
        print("\n".join(summary(rows)))
    elif rows:
        print("\n# the bandwidth and speedup targets are GPU targets; this was a CPU run")
    return 0
