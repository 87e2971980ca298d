"""Compile the GGUF MXFP4 kernel (kernels/gguf.py) for compute capability 90, every input
dtype its launcher takes; run as a script by tests/test_export_gguf_mxfp4.py (without
TRITON_INTERPRET). Prints one JSON line like compile_kernels.py, whose PTX checks are
joined by two of this kernel's: its exponent must not come from the approximate float32
lg2 (whose floor differs from gguf-py's just below powers of two), and the amax (max, abs,
its widening to float64) must keep subnormals. (The floor and ceil run as cvt.rmi/rpi.ftz:
harmless, their inputs, log2 values and t - 0.5, are never subnormal.)"""

import os
import re
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compile_kernels  # noqa: E402
import torch  # noqa: E402

from gpuquant.backends.triton import export as triton_export  # noqa: E402


def _problems(name, ptx):
    found = _ptx_problems(name, ptx)
    if re.search(r"\blg2\.approx(\.ftz)?\.f32", ptx):
        found.append(f"{name}: approximate float32 log2")
    if re.search(r"\b(cvt\.ftz\.f64\.f32|(max|abs)\.ftz\.f32)", ptx):
        found.append(f"{name}: an amax that flushes subnormals")
    return found


_ptx_problems = compile_kernels.problems_in
compile_kernels.problems_in = _problems


def exercise():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        try:
            triton_export.quantize_gguf(torch.empty((64, 4096), dtype=dtype), "mxfp4")
        except Exception:  # noqa: BLE001 - nothing ran: the flags are garbage
            pass


if __name__ == "__main__":
    sys.exit(compile_kernels.main(exercise))
