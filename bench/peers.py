"""The code a user would write instead: eager and compiled composites, bitsandbytes.

The torch composites take tensors only, so that ``torch.compile`` traces each
one whole. :func:`compiled_peer` compiles and warms one up on its arguments,
so that the harness times the compiled code and never the compiler.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

GROUP = 128


# ---------------------------------------------------------------------- NumPy
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


# ---------------------------------------------------------------------- torch
def torch_int4_group(x, symmetric: bool, group: int = GROUP):
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
    return (q[:, 0::2] << 4) | q[:, 1::2], scale


def torch_dequant_int4_group(packed, scale, zero_point, dtype):
    """Unpack both nibbles (high first), subtract the zero point, scale, cast."""
    import torch

    q = torch.stack(((packed >> 4), (packed & 15)), dim=-1).reshape(packed.shape[0], -1).float()
    g = q.reshape(packed.shape[0], -1, GROUP)
    return ((g - zero_point[..., None]) * scale[..., None]).reshape(q.shape).to(dtype)


def torch_int8_channel(x):
    """Per-row absmax int8: what torch_per_token does along the last axis, for axis 0."""
    import torch

    scale = x.abs().amax(dim=1, keepdim=True).float() / 127
    return torch.clamp(torch.round(x.float() / scale), -128, 127).to(torch.int8), scale


def torch_dequant_int8_channel(codes, scale, dtype):
    return (codes.float() * scale[:, None]).to(dtype)


def torch_per_token(x):
    import torch

    scale = x.abs().amax(dim=-1, keepdim=True).float() / 127
    return torch.clamp(torch.round(x.float() / scale), -128, 127).to(torch.int8), scale


_compiled_fns: dict = {}


def compiled_peer(fn, *args) -> Callable[[], object]:
    """``torch.compile(fn)`` (static shapes) bound to ``args``, compiled and warmed up here.

    A failure to compile becomes a baseline that raises, so the harness prints it.
    """
    import torch

    if fn not in _compiled_fns:
        _compiled_fns[fn] = torch.compile(fn, dynamic=False)
    compiled = _compiled_fns[fn]
    try:
        for _ in range(2):  # the first call compiles; the second shows nothing is left to compile
            compiled(*args)
        torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001 - a peer failing costs its row only
        message = f"torch.compile failed: {type(exc).__name__}: {str(exc)[:200]}"

        def failed():
            raise RuntimeError(message)

        return failed
    return lambda: compiled(*args)


# --------------------------------------------------------------- bitsandbytes
def bitsandbytes_peer(base: dict, x, quantize: bool) -> None:
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
