"""Compile every kernel specialisation the Triton launch plans use, for compute capability 90.

Run as a script (tests/test_triton_compile.py does, without TRITON_INTERPRET):
the runners and primitives are driven with CPU tensors inside
``gpuquant.backends.triton.launch.recording()``, so the recorded launches are
exactly what a GPU run would compile. Each is then built with
``triton.compile`` for an sm_90 target (no GPU needed) and its PTX is checked
for the instructions that would break bit-exactness, and, on the int4 fast
paths, for byte-wide stores of packed codes. Prints one JSON line:
{"compiled": n, "problems": [...], "kernels": [...]}.
"""

import concurrent.futures
import json
import multiprocessing
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import triton  # noqa: E402
from ptx_checks import narrow_code_stores, problems_in  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import gpuquant as gq  # noqa: E402
from gpuquant.backends.triton.backend import TritonBackend  # noqa: E402
from gpuquant.backends.triton.launch import recording  # noqa: E402
from gpuquant.calibration.searches import mse_factors  # noqa: E402
from gpuquant.core.layout import Layout  # noqa: E402

PTR = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64",
       "int8": "i8", "uint8": "u8", "int16": "i16", "uint16": "u16", "int32": "i32",
       "int64": "i64"}
SHAPES = [((5, 45), dict(granularity="group", group_size=16)),
          ((3, 40), dict(granularity="group", group_size=5)),
          ((7, 33), dict(granularity="channel", axis=0)),
          ((6, 20), dict(granularity="channel", axis=-1)),
          ((2, 3, 4, 9), dict(granularity="channel", axis=1)),
          ((4, 37), dict(granularity="tensor")),
          ((2, 3, 33), dict(granularity="token")),
          ((8192, 8192), dict(granularity="group", group_size=128)),
          ((8192, 8192), dict(granularity="channel", axis=0)),
          ((8192, 8192), dict(granularity="channel", axis=1)),
          ((8192, 8192), dict(granularity="tensor")),
          ((16, 4096), dict(granularity="token"))]


def signature_of(launch):
    """Specialise as Triton's launcher does: ints of 1 become constants, and pointers
    (16-byte aligned from the allocators) and ints divisible by 16 get that hint."""
    kernel = launch.kernel
    signature, values, attrs = {}, {}, {}
    for index, (name, arg) in enumerate(zip(kernel.arg_names, launch.args)):
        if hasattr(arg, "data_ptr"):
            signature[name] = "*" + PTR[str(arg.dtype).replace("torch.", "")]
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif int(arg) == 1:
            signature[name] = "constexpr"
            values[name] = 1
        else:
            signature[name] = "i64" if abs(int(arg)) >= 2**31 else "i32"
            if int(arg) % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    for name, value in launch.constexprs.items():
        signature[name] = "constexpr"
        values[name] = value
    key = (kernel.fn.__name__, tuple(signature.items()), tuple(values.items()),
           tuple(sorted(attrs)), launch.num_warps)
    return key, (kernel, signature, values, attrs, launch.num_warps)


def exercise_calibration(be, x2, layout):
    """The percentile selections and histograms of one input (kernels are not run, so an
    unread non-finite count may raise after the launches are recorded)."""
    for ignore in (False, True):
        try:
            be.percentile(x2, layout, 0.1, 99.9, ignore)
        except gq.NonFiniteError:
            pass
    amax = torch.ones(layout.unit_shape)
    for bins, signed in ((2048, False), (4096, True), (200, False), (7, False)):
        be.abs_histogram(x2, layout, amax, bins, signed)


# (scheme, symmetric, input dtypes): every scheme and both symmetries, the input dtypes on int4
CONFIGS = [("int4", True, (torch.float16, torch.bfloat16, torch.float32)),
           ("int4", False, (torch.float16, torch.bfloat16, torch.float32)),
           ("int8", True, (torch.float16,)), ("int8", False, (torch.float16,)),
           ("int16", False, (torch.float16,))]


def exercise(be):
    for shape, kw in SHAPES:
        big = shape[-1] >= 4096  # the sizes of the benchmark: the hot configurations only
        for scheme, symmetric, dtypes in CONFIGS:
            if big and scheme == "int16":
                continue
            for dtype in dtypes[:1] if big else dtypes:
                cfg = gq.QuantConfig(scheme=scheme, symmetric=symmetric, **kw)
                one_config(be, shape, dtype, cfg, full=dtype == torch.float16)
        cfg = gq.QuantConfig(scheme="int4", ignore_nonfinite=True, **kw)  # CHECK=False
        one_config(be, shape, torch.float16, cfg, full=False)
    cfg = gq.QuantConfig(scheme="int4", nibble_order="low_first", granularity="group",
                         group_size=128)
    one_config(be, (64, 256), torch.float16, cfg, full=False)
    token = Layout.of((2, 8192), gq.QuantConfig(granularity="token"))  # units past SORT_MAX
    exercise_calibration(be, torch.empty((2, 8192), dtype=torch.float16), token)


def one_config(be, shape, dtype, cfg, full: bool):
    """Record the quantize plans of one config; with ``full`` also the given-qparams path,
    dequantize to every output dtype, the min/max and qparams primitives and the MSE sweep."""
    layout = Layout.of(shape, cfg)
    x = torch.empty(shape, dtype=dtype)
    data, scale, zp = be.plan_quantize(layout, cfg, x)(x)
    be.plan_dequantize(layout, cfg, data, "float16")(data, scale, zp)
    if not full:
        return
    be.plan_quantize_given(layout, cfg, x)(x, scale, zp)
    for out in ("float32", "bfloat16"):
        be.plan_dequantize(layout, cfg, data, out)(data, scale, zp)
    x2 = x.reshape(layout.rows, layout.cols)
    lo, hi = be.minmax(x2, layout, ignore_nonfinite=True)
    be.qparams(lo, hi, cfg)
    if cfg.bits != 16:
        be.mse_errors(x2, layout, lo, hi, mse_factors(100), cfg)
    if cfg.bits == 8 and cfg.symmetric and x2.numel() <= 1 << 16:
        exercise_calibration(be, x2, layout)  # (a 8192^2 group histogram would take 17 GB)


_SPECS: list = []


def compile_one(index: int) -> list[str]:
    """Compile spec ``index`` of _SPECS for sm_90 and return the problems of its PTX."""
    (name, *_), (kernel, signature, values, attrs, num_warps) = _SPECS[index]
    source = ASTSource(fn=kernel, signature=signature, constexprs=values, attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                              options={"num_warps": num_warps, "enable_fp_fusion": False})
    ptx = compiled.asm["ptx"]
    problems = problems_in(name, ptx)
    if name == "fused_units_kernel" and values.get("PAIRS") and values.get("EVEN"):
        problems += narrow_code_stores(name, ptx)
    return problems


def main(drive=None):
    """Record what ``drive()`` launches (default: every launch plan and primitive of the
    Triton backend), compile it in parallel, print the JSON line."""
    specs: dict = {}

    class Signatures:  # keeps each launch's signature, not its (large) arrays
        def append(self, launch):
            key, spec = signature_of(launch)
            specs.setdefault(key, spec)

    with recording(sink=Signatures()):
        (drive or (lambda: exercise(TritonBackend())))()
    _SPECS.extend(specs.items())
    context = multiprocessing.get_context("fork")  # the workers inherit _SPECS
    with concurrent.futures.ProcessPoolExecutor(os.cpu_count() or 1, mp_context=context) as pool:
        problems = [p for found in pool.map(compile_one, range(len(_SPECS))) for p in found]
    print(json.dumps({"compiled": len(_SPECS), "problems": sorted(set(problems)),
                      "kernels": sorted({key[0] for key, _ in _SPECS})}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
