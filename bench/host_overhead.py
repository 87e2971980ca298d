"""``python -m bench --host-overhead``: the host work of one repeated gpuquant call.

For each hot operation, on a repeated call (same shape, dtype, device and
config, after one warm-up call), print one JSON object::

    {"quantize-int4-g128": {"python_calls": N, "c_calls": M, "host_us": t, "launches": k, ...},
     "quantize-int8-channel": ..., "dequantize-int4-g128": ..., "dynamic-per-token": ...}

- ``python_calls``: Python function calls ("call" events of ``sys.setprofile``)
  inside the call, launches recorded instead of executed (the CPU proxy of
  issue 9: at most 40). ``c_calls`` counts the "c_call" events apart.
- ``launches``: kernel launches of that call (``gpuquant.backends.triton.launch.recording``).
- ``host_us``: median ``perf_counter`` time of many repeated calls. ``--device cpu``
  (default): torch CPU tensors under the Triton interpreter, launches recorded,
  so the figure is gpuquant's own host work on this CPU. ``--device cuda``:
  launches executed, no synchronisation: the host time of a call on a GPU machine.

The sizes are small (the counts do not depend on them): 256x1024 float16 for
quantize and dequantize, 16x4096 for the per-token call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from .interpreter import rerun_under_interpreter

# name -> (bench op, input shape)
OPS = {
    "quantize-int4-g128": ("quant-int4-g128-asym", (256, 1024)),
    "quantize-int8-channel": ("quant-int8-channel", (256, 1024)),
    "dequantize-int4-g128": ("dequant-int4-g128", (256, 1024)),
    "dynamic-per-token": ("dynamic-per-token", (16, 4096)),
}


def count_calls(fn) -> tuple[int, int]:
    """("call", "c_call") profile events of one ``fn()``, ``fn``'s own frame left out."""
    counts = {"call": 0, "c_call": 0}
    own = getattr(fn, "__code__", None)

    def profile(frame, event, arg):
        if event == "call" and frame.f_code is own or arg is sys.setprofile:
            return  # the counted function's own frame, and the end of the count
        if event in counts:
            counts[event] += 1

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return counts["call"], counts["c_call"]


def time_calls(fn, seconds: float, least: int = 5, most: int = 2000, between=None) -> float:
    """Median microseconds of repeated ``fn()`` calls, for about ``seconds``."""
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < most and (len(times) < least or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if between is not None:
            between()
    return statistics.median(times) * 1e6


def measure(name: str, device: str, seconds: float) -> dict:
    """The figures of one operation (see the module docstring)."""
    import torch

    from gpuquant.backends.triton.launch import recording

    from .ops import build

    op, shape = OPS[name]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=torch.float16)
    fn = build(op, x, "torch", backend="triton", peers=False).ours
    with recording() as launches:
        fn()  # warm-up: whatever is decided once per shape is decided here
        launches.clear()
        calls, c_calls = count_calls(fn)
        count = len(launches)
        launches.clear()
        if device == "cpu":
            host_us = time_calls(fn, seconds, between=launches.clear)
    if device != "cpu":
        fn()
        torch.cuda.synchronize()
        host_us = time_calls(fn, seconds)
        torch.cuda.synchronize()
    return {"python_calls": calls, "c_calls": c_calls, "host_us": round(host_us, 2),
            "launches": count, "shape": list(shape), "dtype": "float16",
            "mode": ("torch CPU tensors, Triton interpreter, launches recorded" if device == "cpu"
                     else f"{device}, launches executed, no synchronisation")}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m bench --host-overhead",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="time spent timing repeated calls, per operation")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        status = rerun_under_interpreter("bench.host_overhead", argv)
        if status is not None:
            return status
    result, failed = {}, False
    for name in OPS:
        try:
            result[name] = measure(name, args.device, args.seconds)
        except Exception as exc:  # noqa: BLE001 - reported in the JSON, exit status 1
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
    print(json.dumps(result), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
