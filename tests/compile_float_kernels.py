"""Compile every float-format kernel specialisation (backends/triton/floats.py) for sm_90.

The runners are driven with CPU tensors inside launch.recording() (see
compile_kernels.py, whose compile-and-check machinery this reuses): every
format, granularity, scale rule and convention, on shapes that take each path
(fused units, long rows, 2-D blocks, per tensor), quantize and dequantize to
each output dtype. Prints the same JSON line as compile_kernels.py.
"""

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compile_kernels  # noqa: E402
import torch  # noqa: E402
from float_cases import Cfg  # noqa: E402

from gpuquant.backends.triton import floats as tf  # noqa: E402

CASES = [((4096, 4096), Cfg()), ((33, 45), Cfg(element="fp8_e5m2")),
         ((4096, 4096), Cfg(granularity="channel")), ((16, 4096), Cfg(granularity="token")),
         ((4, 16384), Cfg(granularity="token")), ((4096, 4096), Cfg(granularity="group")),
         ((7, 45), Cfg(granularity="group", group_size=5)),
         ((4096, 4096), Cfg(granularity="block", block_shape=(128, 128))),
         ((200, 300), Cfg(granularity="block", block_shape=(128, 128)))]
CASES += [((4096, 4096), Cfg(element=e, scale_format="e8m0", granularity="group", group_size=32,
                             scale_rule=r))
          for e in ("fp8_e4m3", "fp8_e5m2", "fp4_e2m1") for r in ("floor", "rceil", "even")]
CASES += [((4096, 4096), Cfg(element="fp4_e2m1", scale_format="e4m3", granularity="group", group_size=16,
                             global_scale_convention=c)) for c in ("compressed_tensors", "modelopt")]
CASES += [((4096, 4096), Cfg(element="nf4", group_size=64)), ((3, 50), Cfg(element="nf4", group_size=64)),
          ((4096, 4096), Cfg(element="nf4", group_size=64, double_quant=True))]


def drive():
    for shape, cfg in CASES:
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.empty(shape, dtype=dtype)
            codes, scale, gs = tf.quantize_float(x, cfg)
        if gs is None and cfg.scale_format == "e4m3":
            gs = torch.empty((), dtype=torch.float32)
        for out in (torch.float32, torch.bfloat16, torch.float16):
            tf.dequantize_float(codes, scale, gs, cfg, shape, dtype=out)
    for gran, g in (("token", 128), ("group", 128)):
        tf.quantize_fp8_dynamic(torch.empty((16, 4096), dtype=torch.bfloat16), gran, g)


if __name__ == "__main__":
    sys.exit(compile_kernels.main(drive))
