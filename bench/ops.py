"""What the harness measures: each operation, its byte count and its baselines.

An operation is built for one input (NumPy on the CPU, torch CUDA or CuPy on
the GPU) and returns a :class:`Case`: the gpuquant callable, the bytes it
must move (each input read once, each output written once, counted per
dtype) and the baselines measured beside it in the same run (bench/peers.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np

import gpuquant as gq

from . import export_ops, float_ops
from . import peers as P

GROUP = P.GROUP
ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}
SMALL_SHAPE = (16, 4096)  # dynamic-per-token-small: a decode step's activations
SMALL_CALLS = 200  # ... timed end to end over this many calls in a row


@dataclasses.dataclass
class Case:
    """``ours`` and each baseline are timed alike: one call, or end to end over ``calls``."""

    op: str
    ours: Callable[[], object]
    bytes_moved: int
    baselines: dict[str, Callable[[], object]]
    shape: tuple[int, int] | None = None  # the input's shape where the case made its own
    calls: int = 1  # > 1: host + device time of one call, in a loop of this many


def _codes_bytes(n: int, bits: int) -> int:
    return n // 2 if bits == 4 else n * bits // 8


def _params_bytes(units: int) -> int:
    return units * 8  # float32 scale + int32 zero point


def _read_bytes(x) -> int:
    return math.prod(x.shape) * ITEMSIZE[str(x.dtype).replace("torch.", "")]


def small_input(x, framework: str, shape=SMALL_SHAPE):
    """Random normals of ``shape`` in x's framework, dtype and device."""
    a = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    if framework == "numpy":
        return a.astype(x.dtype)
    if framework == "cupy":
        import cupy

        return cupy.asarray(a.astype(x.dtype))
    import torch

    return torch.from_numpy(a).to(device=x.device, dtype=x.dtype)


# ------------------------------------------------------- the GPU path's cases
# Each takes (op, x, framework, backend, peers): peers=False builds gpuquant's callable only.
def _peer_kinds(x, framework: str, peers: bool) -> tuple[bool, bool]:
    """(torch peers, torch.compile peers): compiled peers only on torch CUDA inputs."""
    torch_peers = peers and framework == "torch"
    return torch_peers, torch_peers and x.device.type == "cuda"


def _minmax_case(op, x, framework, backend, peers) -> Case:
    rows = x.shape[0]
    cfg = (gq.QuantConfig.int8_per_channel() if op == "minmax-channel"
           else gq.QuantConfig.int4_per_group(GROUP))
    units = rows if op == "minmax-channel" else rows * math.ceil(x.shape[1] / GROUP)
    base: dict[str, Callable[[], object]] = {}
    if peers and framework == "torch":
        if op == "minmax-channel":
            base["torch aminmax"] = lambda: x.aminmax(dim=1)
        else:
            base["torch aminmax"] = lambda: x.reshape(rows, -1, GROUP).aminmax(dim=2)
    elif peers and framework == "numpy":
        base["numpy min+max"] = lambda: (x.min(axis=1), x.max(axis=1)) \
            if op == "minmax-channel" else (x.reshape(rows, -1, GROUP).min(axis=2),
                                            x.reshape(rows, -1, GROUP).max(axis=2))
    return Case(op, lambda: gq.calibrate(x, cfg, backend=backend),
                _read_bytes(x) + _params_bytes(units), base)


def _int4_quantize_case(op, x, framework, backend, peers) -> Case:
    rows, cols = x.shape
    symmetric = op.endswith("-sym")
    cfg = gq.QuantConfig.int4_per_group(GROUP, symmetric=symmetric)
    base: dict[str, Callable[[], object]] = {}
    torch_peers, compiled = _peer_kinds(x, framework, peers)
    if torch_peers:
        base["torch eager"] = lambda: P.torch_int4_group(x, symmetric)
        P.bitsandbytes_peer(base, x, quantize=True)
    if compiled:
        base["torch.compile"] = P.compiled_peer(P.torch_int4_group, x, symmetric)
    if peers and framework == "numpy" and not symmetric:
        base["numpy composite"] = lambda: P.numpy_int4_group(x)
    moved = _read_bytes(x) + _codes_bytes(rows * cols, 4) + \
        _params_bytes(rows * math.ceil(cols / GROUP))
    return Case(op, lambda: gq.quantize(x, cfg, backend=backend), moved, base)


def _int8_quantize_case(op, x, framework, backend, peers) -> Case:
    rows, cols = x.shape
    cfg = gq.QuantConfig.int8_per_channel()
    base: dict[str, Callable[[], object]] = {}
    torch_peers, compiled = _peer_kinds(x, framework, peers)
    if torch_peers or (peers and framework == "numpy"):
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            xf = torch.as_tensor(x).float()
            scale = xf.abs().amax(dim=1).double() / 127
            zp = torch.zeros(rows, dtype=torch.int64, device=xf.device)
            base["torch.quantize_per_channel"] = \
                lambda: torch.quantize_per_channel(xf, scale, zp, 0, torch.qint8)
    if torch_peers:
        base["torch eager"] = lambda: P.torch_int8_channel(x)
    if compiled:
        base["torch.compile"] = P.compiled_peer(P.torch_int8_channel, x)
    moved = _read_bytes(x) + _codes_bytes(rows * cols, 8) + _params_bytes(rows)
    return Case(op, lambda: gq.quantize(x, cfg, backend=backend), moved, base)


def _dequantize_case(op, x, framework, backend, peers) -> Case:
    rows, cols = x.shape
    int4 = op == "dequant-int4-g128"
    cfg = gq.QuantConfig.int4_per_group(GROUP) if int4 else gq.QuantConfig.int8_per_channel()
    qt = gq.quantize(x, cfg, backend=backend)
    base: dict[str, Callable[[], object]] = {}
    torch_peers, compiled = _peer_kinds(x, framework, peers)
    if int4:
        args = (qt.data, qt.scale, qt.zero_point, x.dtype) if torch_peers else ()
        if torch_peers:
            base["torch eager"] = lambda: P.torch_dequant_int4_group(*args)
            P.bitsandbytes_peer(base, x, quantize=False)
        if compiled:
            base["torch.compile"] = P.compiled_peer(P.torch_dequant_int4_group, *args)
        if peers and framework == "numpy":
            base["numpy composite"] = lambda: P.numpy_dequant_int4_group(qt)
        units = rows * math.ceil(cols / GROUP)
    else:
        units = rows
        if torch_peers or (peers and framework == "numpy"):
            _torch_dequantize_peer(base, x, qt, framework)
        if torch_peers:
            base["torch eager"] = lambda: P.torch_dequant_int8_channel(qt.data, qt.scale, x.dtype)
        if compiled:
            base["torch.compile"] = P.compiled_peer(P.torch_dequant_int8_channel, qt.data,
                                                    qt.scale, x.dtype)
    moved = _codes_bytes(rows * cols, cfg.bits) + _params_bytes(units) + _read_bytes(x)
    return Case(op, lambda: qt.dequantize(backend=backend), moved, base)


def _torch_dequantize_peer(base, x, qt, framework) -> None:
    """``torch.Tensor.dequantize`` of a per-channel qint8 tensor, where torch is there."""
    try:
        import torch
    except ImportError:
        return
    xt = torch.as_tensor(x).float()
    scale = torch.as_tensor(np.asarray(qt.scale) if framework == "numpy" else qt.scale).double()
    zp = torch.zeros(x.shape[0], dtype=torch.int64, device=xt.device)
    base["torch dequantize()"] = torch.quantize_per_channel(xt, scale, zp, 0, torch.qint8).dequantize


def _dynamic_case(op, x, framework, backend, peers) -> Case:
    small = op == "dynamic-per-token-small"
    if small:
        x = small_input(x, framework)
    rows, cols = x.shape
    dq = gq.DynamicQuantizer("int8", per_token=True, backend=backend)
    base: dict[str, Callable[[], object]] = {}
    torch_peers, compiled = _peer_kinds(x, framework, peers)
    if torch_peers:
        base["torch eager"] = lambda: P.torch_per_token(x)
    if compiled:
        base["torch.compile"] = P.compiled_peer(P.torch_per_token, x)
    moved = _read_bytes(x) + _codes_bytes(rows * cols, 8) + _params_bytes(rows)
    return Case(op, lambda: dq(x), moved, base, shape=(rows, cols) if small else None,
                calls=SMALL_CALLS if small else 1)


GPU_PATH_CASES = {
    "minmax-channel": _minmax_case, "minmax-group": _minmax_case,
    "quant-int8-channel": _int8_quantize_case,
    "quant-int4-g128-sym": _int4_quantize_case, "quant-int4-g128-asym": _int4_quantize_case,
    "dequant-int8-channel": _dequantize_case, "dequant-int4-g128": _dequantize_case,
    "dynamic-per-token": _dynamic_case, "dynamic-per-token-small": _dynamic_case,
}


# ---------------------------------------------------------------------- cases
def build(op: str, x, framework: str, backend: str | None = None, peers: bool = True) -> Case:
    """The Case of ``op`` on input ``x``.

    ``backend`` goes to gpuquant's calls on the GPU path (``"triton"`` runs torch CPU
    tensors under TRITON_INTERPRET=1); ``peers=False`` builds no baselines there.
    """
    if op in GPU_PATH_CASES:
        return GPU_PATH_CASES[op](op, x, framework, backend, peers)
    if op in float_ops.OPS:  # FP8, MXFP8/MXFP4, NVFP4, NF4 (bench/float_ops.py)
        return float_ops.build(op, x, framework, Case, ITEMSIZE[str(x.dtype).replace("torch.", "")],
                               backend, peers)
    if op in export_ops.OPS:  # GGUF blocks and pack-quantized (bench/export_ops.py)
        return export_ops.build(op, x, framework, Case, ITEMSIZE[str(x.dtype).replace("torch.", "")])
    rows, cols = x.shape
    n = rows * cols
    read = _read_bytes(x)
    on_torch, on_cupy = framework == "torch", framework == "cupy"
    base: dict[str, Callable[[], object]] = {}

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


OPS = ["minmax-channel", "minmax-group", "quant-int8-channel", "quant-int4-g128-sym",
       "quant-int4-g128-asym", "dequant-int8-channel", "dequant-int4-g128", "dynamic-per-token",
       "dynamic-per-token-small",
       "percentile-channel", "percentile-group", "percentile-tensor", "entropy-tensor",
       "mse-channel", *export_ops.OPS, *float_ops.OPS]
