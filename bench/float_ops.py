"""Benchmark cases of the float formats: FP8 (tensor, channel, 128x128 block), MXFP8, MXFP4,
NVFP4 and NF4, quantize and dequantize.

gpuquant's call is ``gq.quantize`` / ``QuantizedTensor.dequantize`` with the format's preset
(fused Triton kernels on a GPU, the NumPy reference on the CPU). Baselines, on torch CUDA
inputs only: ``torch.compile`` of the eager composite (bench/float_peers.py; a speed peer,
its rounding is not claimed bit-exact), torchao's ``to_mx`` for MXFP8/MXFP4 and
bitsandbytes' ``quantize_4bit(quant_type="nf4")`` for NF4, each where importable.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import gpuquant as gq

from . import float_peers as FP
from . import peers as P

FORMATS = ["fp8-tensor", "fp8-channel", "fp8-block", "mxfp8", "mxfp4", "nvfp4", "nf4"]
OPS = [f"quant-{f}" for f in FORMATS] + [f"dequant-{f}" for f in FORMATS]

_CONFIGS = {
    "fp8-tensor": gq.QuantConfig.fp8_per_tensor, "fp8-channel": gq.QuantConfig.fp8_per_channel,
    "fp8-block": gq.QuantConfig.fp8_block, "mxfp8": gq.QuantConfig.mxfp8,
    "mxfp4": gq.QuantConfig.mxfp4, "nvfp4": gq.QuantConfig.nvfp4, "nf4": gq.QuantConfig.nf4,
}


def stored_bytes(fmt: str, rows: int, cols: int) -> int:
    """Codes plus scales as stored: the bytes a quantize writes and a dequantize reads."""
    n = rows * cols
    if fmt.startswith("fp8"):
        units = {"fp8-tensor": 1, "fp8-channel": rows,
                 "fp8-block": math.ceil(rows / 128) * math.ceil(cols / 128)}[fmt]
        return n + 4 * units
    if fmt == "mxfp8":
        return n + rows * math.ceil(cols / 32)
    if fmt == "mxfp4":
        return n // 2 + rows * math.ceil(cols / 32)
    if fmt == "nvfp4":
        return n // 2 + rows * math.ceil(cols / 16) + 4
    return n // 2 + 4 * math.ceil(n / 64)  # nf4: float32 absmax per 64


def _peers(fmt: str, x, quantize: bool, base: dict[str, Callable[[], object]]) -> None:
    """torch.compile of the composite, torchao and bitsandbytes, on torch CUDA inputs."""
    quant = FP.COMPOSITES[fmt]
    if quantize:
        base["torch.compile"] = P.compiled_peer(quant, x)
    else:
        base["torch.compile"] = P.compiled_peer(FP.DEQUANT[fmt], *quant(x), x.dtype)
    if fmt in ("mxfp8", "mxfp4"):
        FP.torchao_peer(base, x, fmt, quantize)
    if fmt == "nf4":
        FP.bitsandbytes_nf4_peer(base, x, quantize)


def build(op: str, x, framework: str, case_type, itemsize: int, backend=None, peers=True):
    """A ``case_type`` (bench.ops.Case) for ``op`` on ``x``."""
    rows, cols = x.shape
    quantize = op.startswith("quant-")
    fmt = op.split("-", 1)[1]
    cfg = _CONFIGS[fmt]()
    base: dict[str, Callable[[], object]] = {}
    if peers and framework == "torch" and x.device.type == "cuda":
        _peers(fmt, x, quantize, base)
    moved = rows * cols * itemsize + stored_bytes(fmt, rows, cols)
    if quantize:
        return case_type(op, lambda: gq.quantize(x, cfg, backend=backend), moved, base)
    qt = gq.quantize(x, cfg, backend=backend)
    return case_type(op, lambda: qt.dequantize(backend=backend), moved, base)
