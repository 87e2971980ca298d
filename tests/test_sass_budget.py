"""Static budgets of the hot kernels, read from their compiled sm_90 SASS (no GPU needed).

tests/sass_budget.py records the launches of the standard calls (x 8192x8192 float16:
int4 g128 quantize symmetric and asymmetric, int8 per-channel and per-token quantize, their
dequantizes, the min/max passes per group, per channel on axis 0 and on the last axis; the
float formats' quantize and dequantize: FP8 per tensor, channel, token, 1x128 group and
128x128 block, MXFP8, MXFP4, NVFP4, NF4),
compiles each specialisation with Triton's bundled ptxas and checks, per kernel: the busiest
pipe's cycles an element within its budget, no 64-bit integer division, the data moved in
vectors of >= 64 bits, no spills, and registers that let >= 32 warps share an SM. The limits
and their reasons: docs/KERNELS.md.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
pytest.importorskip("torch")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


@pytest.mark.slow
def test_hot_kernels_within_static_budgets():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(HERE / "sass_budget.py")], capture_output=True,
                         text=True, env=env, timeout=600)
    assert out.returncode in (0, 1), out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["problems"] == [], "\n".join(report["problems"])
    calls = {k["call"] for k in report["kernels"]}
    from sass_budget import BUDGETS
    assert calls == set(BUDGETS)  # every standard call compiled, and each has a budget


def test_budget_rules_catch_what_they_look_for():
    from sass_budget import DIV64, hot_path, parse, pipe_cycles, problems_of, warps_per_sm

    ok = dict(call="q_int4_g128_sym", kernel="k", pipe_cycles_per_elem=0.5, bound="issue",
              div64=False, wide_bytes_per_prog=2560, data_bytes_per_prog=2560, spilled=0,
              local_memory=False, warps_per_sm=32, regs=56, num_warps=2)
    assert problems_of(ok) == []
    for change in (dict(pipe_cycles_per_elem=0.9), dict(div64=True), dict(wide_bytes_per_prog=2048),
                   dict(spilled=8), dict(warps_per_sm=24), dict(call="unknown")):
        assert len(problems_of(dict(ok, **change))) == 1, change
    nf4 = dict(ok, call="q_nf4", pipe_cycles_per_elem=2.5)  # its own limits
    assert problems_of(dict(nf4, warps_per_sm=24)) == []
    assert len(problems_of(dict(nf4, warps_per_sm=16))) == 1
    assert len(problems_of(dict(ok, call="dq_nvfp4", pipe_cycles_per_elem=0.7))) == 1
    assert DIV64.search("CALL.REL.NOINC `($__internal_0_$__cuda_sm20_div_s64) ;")
    assert DIV64.search("div.s64 %rd1, %rd2, %rd3;") and not DIV64.search("div.rn.f32 %r1;")
    assert warps_per_sm(64, 1, 0) == 32 and warps_per_sm(65, 1, 0) == 28
    assert pipe_cycles({"FMNMX": 3, "LDG": 1})["alu"] == 6
    sass = """
        /*0000*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0010*/              @!P0 BRA `(.L_x_1) ;
        /*0020*/                   REDG.E.ADD.STRONG.SYS desc[UR4][R6.64], R8 ;
.L_x_1:
        /*0030*/                   FMNMX R1, R2, R3, PT ;
        /*0040*/                   EXIT ;
"""
    path, in_loop = hot_path(parse(sass))  # the branch around the report is taken
    assert [p.split()[0] for p in path] == ["LDG.E.128", "@!P0", "FMNMX", "EXIT"]
    assert not any(in_loop)
