"""Compile every kernel specialisation the Triton launchers use, for compute capability 90.

Run as a script (tests/test_triton_compile.py does, without TRITON_INTERPRET):
the launchers are driven with CPU tensors while ``_launch`` is replaced by a
recorder, so the recorded signatures are exactly what a GPU run would
compile. Each is then built with ``triton.compile`` for an sm_90 target (no
GPU needed) and its PTX is checked for the instructions that would break
bit-exactness. Prints one JSON line: {"compiled": n, "problems": [...]}.
"""

import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import triton  # noqa: E402
from ptx_checks import problems_in  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import gpuquant as gq  # noqa: E402
from gpuquant.backends import triton as launchers  # noqa: E402
from gpuquant.layout import Layout  # noqa: E402
from gpuquant.searches import mse_factors  # noqa: E402

PTR = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", "float64": "fp64",
       "int8": "i8", "uint8": "u8", "int16": "i16", "uint16": "u16", "int32": "i32",
       "int64": "i64"}
specs = {}


def record(kernel, grid, *args, num_warps=4, **constexprs):
    """Specialise as Triton's launcher does: ints of 1 become constants, and pointers
    (16-byte aligned from the allocators) and ints divisible by 16 get that hint."""
    signature, values, attrs = {}, {}, {}
    for index, (name, arg) in enumerate(zip(kernel.arg_names, args)):
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
    for name, value in constexprs.items():
        signature[name] = "constexpr"
        values[name] = value
    key = (kernel.fn.__name__, tuple(signature.items()), tuple(values.items()),
           tuple(sorted(attrs)), num_warps)
    specs[key] = (kernel, signature, values, attrs, num_warps)


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


def exercise():
    launchers._launch = record
    be = launchers.TritonBackend()
    shapes = [((5, 45), dict(granularity="group", group_size=16)),
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
              ((64, 4096), dict(granularity="token"))]
    for shape, kw in shapes:
        for scheme in ("int4", "int8", "int16"):
            for symmetric in (True, False):
                for dtype in (torch.float16, torch.bfloat16, torch.float32):
                    if dtype != torch.float16 and scheme != "int4":
                        continue  # the input dtype only changes the load
                    cfg = gq.QuantConfig(scheme=scheme, symmetric=symmetric,
                                         ignore_nonfinite=True, **kw)
                    layout = Layout.of(shape, cfg)
                    x2 = torch.empty(shape, dtype=dtype).reshape(layout.rows, layout.cols)
                    data, scale, zp = be.calibrate_quantize(x2, layout, cfg)
                    be.quantize(x2, layout, cfg, scale, zp)
                    be.minmax(x2, layout, ignore_nonfinite=True)
                    for out in ("float32", "float16", "bfloat16"):
                        be.dequantize(data, layout, cfg, scale, zp, out)
                    if dtype == torch.float16:
                        lo, hi = be.minmax(x2, layout, ignore_nonfinite=True)
                        be.mse_errors(x2, layout, lo, hi, mse_factors(100), cfg)
                    if scheme == "int8" and symmetric:
                        exercise_calibration(be, x2, layout)
    cfg = gq.QuantConfig(scheme="int4", nibble_order="low_first", ignore_nonfinite=True,
                         granularity="group", group_size=128)
    layout = Layout.of((64, 256), cfg)
    x2 = torch.empty((64, 256), dtype=torch.float16)
    data, scale, zp = be.calibrate_quantize(x2, layout, cfg)
    be.quantize(x2, layout, cfg, scale, zp)
    be.dequantize(data, layout, cfg, scale, zp, "float16")


def main():
    exercise()
    target = GPUTarget("cuda", 90, 32)
    problems = []
    for (name, *_), (kernel, signature, values, attrs, num_warps) in specs.items():
        source = ASTSource(fn=kernel, signature=signature, constexprs=values, attrs=attrs)
        compiled = triton.compile(source, target=target,
                                  options={"num_warps": num_warps, "enable_fp_fusion": False})
        problems += problems_in(name, compiled.asm["ptx"])
    print(json.dumps({"compiled": len(specs), "problems": sorted(set(problems)),
                      "kernels": sorted({k[0] for k in specs})}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
