"""What the harness measures: each operation, its byte count and its baselines.

An operation is built for one input (NumPy on the CPU, torch CUDA or CuPy on
the GPU) and returns a :class:`Case`: the gpuquant callable, the bytes it
must move (each input read once, each output written once, counted per
dtype) and the baselines measured beside it in the same run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

import gpuquant as gq

GROUP = 128
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclasses.dataclass
class Case:
    op: str
    ours: Callable[[], object]
    bytes_moved: int
    baselines: dict[str, Callable[[], object]]


def _codes_bytes(n: int, bits: int) -> int:
    return n // 2 if bits == 4 else n * bits // 8


def _params_bytes(units: int) -> int:
    return units * 8  # float32 scale + int32 zero point


# ----------------------------------------------------------------- composites
def numpy_int4_group(x, group=GROUP):
    """divide, rint, clip, astype, shift and or: the straightforward NumPy composite."""
    g = x.reshape(x.shape[0], -1, group).astype(np.float32)
    lo = np.minimum(g.min(axis=2, keepdims=True), 0)
    hi = np.maximum(g.max(axis=2, keepdims=True), 0)
    scale = (hi - lo) / 15
    scale[scale == 0] = 1
    zp = np.clip(-np.rint(lo / scale), 0, 15)
    q = np.clip(np.rint(g / scale) + zp, 0, 15).astype(np.uint8).reshape(x.shape[0], -1)
    return (q[:, 0::2] << 4) | q[:, 1::2], scale, zp


def numpy_dequant_int4_group(qt):
    p = qt.data
    q = np.empty((p.shape[0], p.shape[1] * 2), np.float32)
    q[:, 0::2] = p >> 4
    q[:, 1::2] = p & 15
    g = q.reshape(p.shape[0], -1, GROUP)
    return ((g - qt.zero_point[..., None]) * qt.scale[..., None]).reshape(q.shape)


def torch_int4_group(x, symmetric, group=GROUP):
    """amin/amax, divide, round, clamp, to uint8, shifts: eager torch."""
    import torch

    g = x.reshape(x.shape[0], -1, group).float()
    if symmetric:
        scale = g.abs().amax(dim=2, keepdim=True) / 7
        q = torch.clamp(torch.round(g / scale), -8, 7).to(torch.int8)
        q = (q & 0xF).to(torch.uint8)
    else:
        lo = g.amin(dim=2, keepdim=True).clamp(max=0)
        hi = g.amax(dim=2, keepdim=True).clamp(min=0)
        scale = (hi - lo) / 15
        zp = torch.round(-lo / scale)
        q = torch.clamp(torch.round(g / scale) + zp, 0, 15).to(torch.uint8)
    q = q.reshape(x.shape[0], -1)
    return (q[:, 0::2] << 4) | q[:, 1::2]


def torch_dequant_int4_group(qt):
    import torch

    p = qt.data
    q = torch.stack(((p >> 4), (p & 15)), dim=-1).reshape(p.shape[0], -1).float()
    g = q.reshape(p.shape[0], -1, GROUP)
    return ((g - qt.zero_point[..., None]) * qt.scale[..., None]).reshape(q.shape).half()


def torch_int8_channel(x):
    import torch

    scale = x.abs().amax(dim=1, keepdim=True).float() / 127
    return torch.clamp(torch.round(x.float() / scale), -128, 127).to(torch.int8)


def torch_per_token(x):
    import torch

    scale = x.abs().amax(dim=-1, keepdim=True).float() / 127
    return torch.clamp(torch.round(x.float() / scale), -128, 127).to(torch.int8), scale


# ---------------------------------------------------------------------- cases
def build(op: str, x, framework: str) -> Case | None:
    """The Case of ``op`` on input ``x`` (None when the op does not apply)."""
    rows, cols = x.shape
    n = rows * cols
    itemsize = ITEMSIZE[str(x.dtype).replace("torch.", "")]
    read = n * itemsize
    on_torch, on_cupy = framework == "torch", framework == "cupy"
    base: dict[str, Callable[[], object]] = {}

    if op in ("minmax-channel", "minmax-group"):
        cfg = (gq.QuantConfig.int8_per_channel() if op == "minmax-channel"
               else gq.QuantConfig.int4_per_group(GROUP))
        units = rows if op == "minmax-channel" else rows * math.ceil(cols / GROUP)
        if on_torch:
            if op == "minmax-channel":
                base["torch aminmax"] = lambda: x.aminmax(dim=1)
            else:
                base["torch aminmax"] = lambda: x.reshape(rows, -1, GROUP).aminmax(dim=2)
        elif framework == "numpy":
            base["numpy min+max"] = lambda: (x.min(axis=1), x.max(axis=1)) \
                if op == "minmax-channel" else (x.reshape(rows, -1, GROUP).min(axis=2),
                                                x.reshape(rows, -1, GROUP).max(axis=2))
        return Case(op, lambda: gq.calibrate(x, cfg), read + _params_bytes(units), base)

    if op.startswith("quant-int4-g128"):
        symmetric = op.endswith("sym") and not op.endswith("asym")
        cfg = gq.QuantConfig.int4_per_group(GROUP, symmetric=symmetric)
        units = rows * math.ceil(cols / GROUP)
        if on_torch:
            base["torch eager"] = lambda: torch_int4_group(x, symmetric)
            _bitsandbytes(base, x, quantize=True)
        elif framework == "numpy" and not symmetric:
            base["numpy composite"] = lambda: numpy_int4_group(x)
        return Case(op, lambda: gq.quantize(x, cfg), read + _codes_bytes(n, 4) +
                    _params_bytes(units), base)

    if op == "quant-int8-channel":
        cfg = gq.QuantConfig.int8_per_channel()
        if on_torch:
            import torch

            base["torch eager"] = lambda: torch_int8_channel(x)
            scale = x.abs().amax(dim=1).double() / 127
            zp = torch.zeros(rows, dtype=torch.int64, device=x.device)
            xf = x.float()
            base["torch.quantize_per_channel"] = \
                lambda: torch.quantize_per_channel(xf, scale, zp, 0, torch.qint8)
        elif framework == "numpy":
            try:
                import torch

                xt = torch.from_numpy(x).float()
                scale = torch.from_numpy(np.abs(x).max(axis=1).astype(np.float64) / 127)
                zp = torch.zeros(rows, dtype=torch.int64)
                base["torch.quantize_per_channel"] = \
                    lambda: torch.quantize_per_channel(xt, scale, zp, 0, torch.qint8)
            except ImportError:
                pass
        return Case(op, lambda: gq.quantize(x, cfg), read + _codes_bytes(n, 8) +
                    _params_bytes(rows), base)

    if op == "dequant-int4-g128":
        cfg = gq.QuantConfig.int4_per_group(GROUP)
        qt = gq.quantize(x, cfg)
        units = rows * math.ceil(cols / GROUP)
        if on_torch:
            base["torch eager"] = lambda: torch_dequant_int4_group(qt)
            _bitsandbytes(base, x, quantize=False)
        elif framework == "numpy":
            base["numpy composite"] = lambda: numpy_dequant_int4_group(qt)
        return Case(op, lambda: qt.dequantize(), _codes_bytes(n, 4) + _params_bytes(units) +
                    read, base)

    if op == "dequant-int8-channel":
        cfg = gq.QuantConfig.int8_per_channel()
        qt = gq.quantize(x, cfg)
        if framework in ("numpy", "torch"):
            import torch

            xt = torch.as_tensor(x).float() if framework == "numpy" else x.float()
            scale = torch.as_tensor(np.asarray(qt.scale) if framework == "numpy"
                                    else qt.scale).double()
            zp = torch.zeros(rows, dtype=torch.int64, device=xt.device)
            tq = torch.quantize_per_channel(xt, scale, zp, 0, torch.qint8)
            base["torch dequantize()"] = tq.dequantize
        if on_torch:
            base["torch eager"] = lambda: (qt.data.float() * qt.scale[:, None]).to(x.dtype)
        return Case(op, lambda: qt.dequantize(), _codes_bytes(n, 8) + _params_bytes(rows) + read,
                    base)

    if op == "dynamic-per-token":
        dq = gq.DynamicQuantizer("int8", per_token=True)
        if on_torch:
            base["torch eager"] = lambda: torch_per_token(x)
        return Case(op, lambda: dq(x), read + _codes_bytes(n, 8) + _params_bytes(rows), base)

    if op == "percentile-channel":
        cfg = gq.QuantConfig(granularity="channel", calibration=gq.Percentile(0.1, 99.9))
        if on_torch:
            q = x.new_tensor([0.001, 0.999], dtype=x.dtype).float()
            base["torch.quantile(dim=1)"] = lambda: x.float().quantile(q, dim=1)
            base["torch.sort(dim=1)"] = lambda: x.sort(dim=1)
        elif on_cupy:
            import cupy

            base["cupy.percentile"] = lambda: cupy.percentile(x, [0.1, 99.9], axis=1)
        elif framework == "numpy":
            base["numpy.percentile"] = lambda: np.percentile(x, [0.1, 99.9], axis=1)
        return Case(op, lambda: gq.calibrate(x, cfg), read + _params_bytes(rows), base)

    if op == "percentile-group":
        cfg = gq.QuantConfig.int4_per_group(GROUP).replace(calibration=gq.Percentile(0.1, 99.9))
        units = rows * math.ceil(cols / GROUP)
        if on_torch and cols % GROUP == 0:
            base["torch.sort(dim=-1)"] = lambda: x.reshape(rows, -1, GROUP).sort(dim=-1)
        elif framework == "numpy" and cols % GROUP == 0:
            base["numpy.percentile"] = lambda: np.percentile(
                x.reshape(rows, -1, GROUP), [0.1, 99.9], axis=2)
        return Case(op, lambda: gq.calibrate(x, cfg), read + _params_bytes(units), base)

    if op in ("entropy-tensor", "mse-channel"):
        cfg = (gq.QuantConfig(calibration="entropy") if op == "entropy-tensor"
               else gq.QuantConfig(granularity="channel", calibration="mse"))
        return Case(op, lambda: gq.calibrate(x, cfg), read + _params_bytes(
            1 if op == "entropy-tensor" else rows), base)

    if op == "percentile-tensor":
        cfg = gq.QuantConfig(calibration=gq.Percentile(0.1, 99.9))
        if on_torch and n <= 1 << 24:
            q = x.new_tensor([0.001, 0.999], dtype=x.dtype).float()
            base["torch.quantile"] = lambda: x.float().quantile(q)
        if on_torch:
            base["torch.kthvalue"] = lambda: x.reshape(-1).float().kthvalue(max(1, n // 1000))
        return Case(op, lambda: gq.calibrate(x, cfg), read + _params_bytes(1), base)
    raise ValueError(f"unknown operation {op!r}")


def _bitsandbytes(base, x, quantize: bool) -> None:
    """bitsandbytes' 4-bit blockwise (blocksize 128) as a peer, when importable."""
    try:
        import bitsandbytes.functional as bnb
    except Exception:  # noqa: BLE001 - optional peer, any import failure means absent
        return
    if quantize:
        base["bitsandbytes quantize_4bit"] = lambda: bnb.quantize_4bit(x, blocksize=GROUP)
    else:
        packed, state = bnb.quantize_4bit(x, blocksize=GROUP)
        base["bitsandbytes dequantize_4bit"] = lambda: bnb.dequantize_4bit(packed, state)


OPS = ["minmax-channel", "minmax-group", "quant-int8-channel", "quant-int4-g128-sym",
       "quant-int4-g128-asym", "dequant-int8-channel", "dequant-int4-g128", "dynamic-per-token",
       "percentile-channel", "percentile-group", "percentile-tensor", "entropy-tensor",
       "mse-channel"]
