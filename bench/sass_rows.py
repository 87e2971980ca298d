"""Rows for the static model's data file: static SASS figures next to the measured times.

    python -m bench.sass_rows --out OUT/sass_rows.json [--bench-csv OUT/bench.csv] [--side N]

Records the standard calls (bench/sass_calls.py), compiles each launch for sm_90 with this
machine's Triton and reads its SASS (tests/sass_budget.py: registers, hot warp-instructions
and pipe cycles an element, budget problems), and writes one row per launch in the format of
../shared/sass/measurements.json, with ``measured_us`` from bench.csv where the benchmark ran
the same operation at the same size (gpuquant's float16 row; an end-to-end time of the call,
so a min/max row includes its qparams launch: ``how`` says so). Rows without a time keep
``measured_us`` null. bench/device_check.sh runs this after the benchmark: add the timed rows
to measurements.json and refit (`python ../shared/sass/fit.py --update`, docs/KERNELS.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# call of bench/sass_calls.py -> bench operation (bench/ops.py) timing the same launches
BENCH_OP = {"q_int4_g128_sym": "quant-int4-g128-sym", "q_int4_g128_asym": "quant-int4-g128-asym",
            "q_int8_channel": "quant-int8-channel", "dq_int4_g128_sym": "dequant-int4-g128",
            "dq_int8_channel": "dequant-int8-channel", "mm_group128": "minmax-group",
            "mm_channel": "minmax-channel",
            # the float formats (bench/float_ops.py, the same presets); the one-launch calls
            # only (q_fp8_tensor and q_nvfp4 also launch amax_kernel)
            **{f"{q}_{name.replace('-', '_')}": f"{op}-{name}"
               for name in ("fp8-channel", "fp8-block", "mxfp8", "mxfp4", "nf4")
               for q, op in (("q", "quant"), ("dq", "dequant"))},
            "dq_fp8_tensor": "dequant-fp8-tensor", "dq_nvfp4": "dequant-nvfp4"}


def measured(csv_path: str | None, side: int) -> dict[str, float]:
    """op -> gpuquant's time (µs) on float16 side x side in bench.csv."""
    if not csv_path or not os.path.exists(csv_path):
        return {}
    sys.path.insert(0, str(REPO))
    from bench.harness import load_rows

    return {r["op"]: r["ms"] * 1000 for r in load_rows(csv_path)
            if r["impl"] == "gpuquant" and r["dtype"] == "float16" and r["rows"] == side
            and r["cols"] == side}


def static_rows(side: int) -> tuple[list[dict], str]:
    """(rows without times, Triton version): the calls recorded and compiled here."""
    sys.path.insert(0, str(REPO / "tests"))
    import sass_budget
    import triton

    rec = sass_budget.record(None, side)
    rows = []
    for call in rec["calls"]:
        for i, launch in enumerate(call["launches"]):
            f = sass_budget.figures(call, launch, sass_budget.compile_launch(launch))
            name = call["call"] if len(call["launches"]) == 1 else f"{call['call']}_{i}"
            grid = f["grid"]
            rows.append(dict(
                name=name, role=call["role"], kernel=f"{launch['module']}:{launch['kernel']}",
                num_warps=launch["num_warps"], constexprs=launch["constexprs"],
                args=[a["tensor"] if "tensor" in a else a["int"] for a in launch["args"]],
                grid=grid, fp_fusion=launch["options"].get("enable_fp_fusion", True),
                numel=call["numel"], bytes=launch["bytes"], problem=call["what"],
                static=dict({k: f[k] for k in ("regs", "warps_per_sm", "warp_insn_per_elem",
                                                 "pipe_cycles_per_elem", "bound", "spilled")},
                            problems=sass_budget.problems_of(f))))
    return rows, triton.__version__


def commit() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "not a git checkout"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--bench-csv", default=None, help="bench.csv of the same run")
    ap.add_argument("--side", type=int, default=8192, help="x is side x side float16")
    ap.add_argument("--gpu", default="", help="the GPU's name, for the rows")
    a = ap.parse_args()
    rows, version = static_rows(a.side)
    times = measured(a.bench_csv, a.side)
    today = datetime.date.today().isoformat()
    for row in rows:
        op = BENCH_OP.get(row["name"])
        us = times.get(op)
        row.update(measured_us=round(us, 2) if us else None, triton=version, gpu=a.gpu,
                   date=today if us else "", anchor=None, source=f"gpuquant {commit()}",
                   how=f"bench.csv {op}: end-to-end time of the call (all its launches)"
                   if us else "")
    Path(a.out).write_text(json.dumps(dict(about=__doc__.split("\n\n")[0], rows=rows), indent=1))
    timed = sum(1 for r in rows if r["measured_us"])
    print(f"{len(rows)} rows ({timed} with a measured time), Triton {version} -> {a.out}")
    for r in rows:
        s = r["static"]
        flags = "  " + "; ".join(s["problems"]) if s["problems"] else ""
        print(f"  {r['name']:18} {r['kernel'].split(':')[1]:24} regs {s['regs']:3} "
              f"wi/el {s['warp_insn_per_elem']:.3f} cycles/el {s['pipe_cycles_per_elem']:.3f} "
              f"measured {r['measured_us'] or '-'} µs{flags}")


if __name__ == "__main__":
    main()
