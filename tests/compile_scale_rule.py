"""Compile the scale_rule="half_range" specialisations (HALF_RANGE=True) for compute capability 90.

Run as a script by tests/test_scale_rule.py (without TRITON_INTERPRET): the quantize plans,
primitives and MSE sweep of a few half_range configs (the fused, staged and given-qparams
paths) and the pack-quantized export kernel are recorded with CPU tensors and built by
compile_kernels.main, which checks their PTX (the division of the codes must be div.rn).
Prints one JSON line like compile_kernels.py.
"""

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compile_kernels  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import gpuquant as gq  # noqa: E402
from gpuquant.backends.triton import export as triton_export  # noqa: E402
from gpuquant.backends.triton.backend import TritonBackend  # noqa: E402

SHAPES = [((5, 256), dict(granularity="group", group_size=128)),  # fused, pairs
          ((3, 40), dict(granularity="group", group_size=5)),     # staged
          ((7, 33), dict(granularity="channel", axis=0)),
          ((6, 20), dict(granularity="channel", axis=-1)),
          ((4, 37), dict(granularity="tensor"))]


def exercise():
    be = TritonBackend()
    for shape, kw in SHAPES:
        for scheme in ("int4", "int8"):
            cfg = gq.QuantConfig(scheme=scheme, scale_rule="half_range", **kw)
            compile_kernels.one_config(be, shape, torch.bfloat16, cfg, full=True)
    for bits in (4, 8):
        triton_export.quantize_pack32(torch.empty((8, 256), dtype=torch.bfloat16),
                                      np.ones((8, 2), np.float32), np.zeros((8, 2), np.int32),
                                      bits, True, 128, half_range=True)


if __name__ == "__main__":
    sys.exit(compile_kernels.main(exercise))
