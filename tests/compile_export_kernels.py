"""Compile every export kernel specialisation its launchers use, for compute capability 90.

Run as a script by tests/test_export_kernels.py (without TRITON_INTERPRET).
The launchers of gpuquant/backends/triton_export.py are driven with CPU
tensors inside gpuquant.backends.triton.launch.recording(); compile_kernels.main
builds each recorded signature for sm_90 and checks its PTX. Prints one
JSON line like compile_kernels.py.
"""

import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compile_kernels  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gpuquant.backends.triton import export as triton_export  # noqa: E402


def exercise():
    for bits in (4, 8):
        for shape in ((4096, 4096), (11008, 4096), (5, 37)):
            triton_export.pack32(torch.empty(shape, dtype=torch.int32), bits, 1)
            triton_export.pack32(torch.empty(shape, dtype=torch.int32), bits, 0)
            for symmetric in (True, False):
                for dtype in (torch.float16, torch.bfloat16, torch.float32):
                    rows, cols = shape
                    group = 32 if cols % 32 == 0 else cols
                    units = (rows, cols // group)
                    triton_export.quantize_pack32(torch.empty(shape, dtype=dtype),
                                                  np.ones(units, np.float32),
                                                  np.zeros(units, np.int32), bits, symmetric,
                                                  group)
    for scheme in ("q8_0", "q4_0"):
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            try:
                triton_export.quantize_gguf(torch.empty((64, 4096), dtype=dtype), scheme)
            except Exception:  # noqa: BLE001 - nothing ran: the flags are garbage
                pass


if __name__ == "__main__":
    sys.exit(compile_kernels.main(exercise))
