"""The code a user would write instead, for the float formats: eager torch composites
(compiled by bench/peers.compiled_peer), torchao's ``to_mx`` and bitsandbytes' NF4.

These are speed peers: the 4-bit composites round to the nearest grid value with
``torch.bucketize`` (ties to one side), so their codes are not claimed bit-exact to
gpuquant's; the bit-exact comparisons with the peers live in the tests. Inputs are 2-D
with columns a multiple of 64 (the bench sizes are).
"""

from __future__ import annotations

import math

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
NF4 = (-1.0, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0.0,
       0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.0)


def _fp8(v):
    import torch

    return v.clamp(-448.0, 448.0).to(torch.float8_e4m3fn)


def fp8_tensor(x):
    s = (x.abs().amax().float() / 448).clamp(min=1.1920929e-07)
    return _fp8(x.float() / s), s


def fp8_channel(x):
    s = (x.abs().amax(dim=1, keepdim=True).float() / 448).clamp(min=1.1920929e-07)
    return _fp8(x.float() / s), s


def fp8_block(x, block=128):
    import torch.nn.functional as F

    rows, cols = x.shape
    pr, pc = math.ceil(rows / block) * block, math.ceil(cols / block) * block
    xp = F.pad(x.float(), (0, pc - cols, 0, pr - rows))
    g = xp.reshape(pr // block, block, pc // block, block)
    s = (g.abs().amax(dim=(1, 3), keepdim=True) / 448).clamp(min=1.1920929e-07)
    q = _fp8(g / s).reshape(pr, pc)[:rows, :cols]
    return q, s.reshape(pr // block, pc // block)


def _e2m1_codes(v):
    """Sign-magnitude E2M1 codes (0..15) of ``v`` (already within +/-6)."""
    import torch

    mids = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], device=v.device)
    idx = torch.bucketize(v.abs(), mids).to(torch.uint8)
    return idx | ((v < 0).to(torch.uint8) << 3)


def _pack_low_first(codes):
    codes = codes.reshape(codes.shape[0], -1)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def _mx(x, emax: int, fmax: float):
    import torch

    g = x.float().reshape(x.shape[0], -1, 32)
    amax = g.abs().amax(dim=2, keepdim=True)
    e = (torch.floor(torch.log2(amax)) - emax).clamp(-127, 127)
    e = torch.where(amax > 0, e, torch.full_like(e, -127))
    return (g / torch.exp2(e)).clamp(-fmax, fmax), (e + 127).to(torch.uint8)


def mxfp8(x):
    v, e = _mx(x, 8, 448.0)
    return _fp8(v).reshape(x.shape), e


def mxfp4(x):
    v, e = _mx(x, 2, 6.0)
    return _pack_low_first(_e2m1_codes(v)), e


def nvfp4(x):
    import torch

    gs = 448.0 * 6.0 / x.abs().amax().float().clamp(min=1e-12)
    g = x.float().reshape(x.shape[0], -1, 16)
    s16 = (gs * g.abs().amax(dim=2, keepdim=True) / 6).clamp(max=448.0).to(torch.float8_e4m3fn)
    s = s16.float()
    s = torch.where(s == 0, torch.full_like(s, 0.125), s)
    return _pack_low_first(_e2m1_codes((g / (s / gs)).clamp(-6.0, 6.0))), s16, gs


def nf4(x, block=64):
    import torch

    g = x.float().reshape(x.shape[0], -1, block)
    absmax = g.abs().amax(dim=2, keepdim=True)
    book = torch.tensor(NF4, device=x.device)
    idx = torch.bucketize(g / absmax.clamp(min=1e-12), (book[1:] + book[:-1]) / 2).to(torch.uint8)
    idx = idx.reshape(x.shape[0], -1)
    return (idx[:, 0::2] << 4) | idx[:, 1::2], absmax


def _lut(table, device):
    import torch

    return torch.tensor([*table, *(-v for v in table)] if len(table) == 8 else table, device=device)


def _unpack_fp4(packed):
    import torch

    lut = _lut(E2M1, packed.device)
    return torch.stack((lut[(packed & 15).long()], lut[(packed >> 4).long()]), dim=-1)


def deq_fp8(q, s, dtype):
    return (q.float() * s).to(dtype)


def deq_fp8_block(q, s, dtype, block=128):
    rows, cols = q.shape
    full = s.repeat_interleave(block, 0).repeat_interleave(block, 1)[:rows, :cols]
    return (q.float() * full).to(dtype)


def deq_mxfp8(q, e, dtype):
    import torch

    g = q.float().reshape(q.shape[0], -1, 32) * torch.exp2(e.float() - 127)
    return g.reshape(q.shape).to(dtype)


def deq_mxfp4(packed, e, dtype):
    import torch

    v = _unpack_fp4(packed).reshape(packed.shape[0], -1, 32) * torch.exp2(e.float() - 127)
    return v.reshape(packed.shape[0], -1).to(dtype)


def deq_nvfp4(packed, s16, gs, dtype):
    v = _unpack_fp4(packed).reshape(packed.shape[0], -1, 16) * (s16.float() / gs)
    return v.reshape(packed.shape[0], -1).to(dtype)


def deq_nf4(packed, absmax, dtype, block=64):
    import torch

    lut = _lut(NF4, packed.device)
    v = torch.stack((lut[(packed >> 4).long()], lut[(packed & 15).long()]), dim=-1)
    return (v.reshape(packed.shape[0], -1, block) * absmax).reshape(packed.shape[0], -1).to(dtype)


COMPOSITES = {"fp8-tensor": fp8_tensor, "fp8-channel": fp8_channel, "fp8-block": fp8_block,
              "mxfp8": mxfp8, "mxfp4": mxfp4, "nvfp4": nvfp4, "nf4": nf4}
DEQUANT = {"fp8-tensor": deq_fp8, "fp8-channel": deq_fp8, "fp8-block": deq_fp8_block,
           "mxfp8": deq_mxfp8, "mxfp4": deq_mxfp4, "nvfp4": deq_nvfp4, "nf4": deq_nf4}


def torchao_peer(base: dict, x, fmt: str, quantize: bool) -> None:
    """torchao's ``to_mx`` (FLOOR, blocks of 32) and its ``to_dtype``, when importable."""
    try:
        import torch
        from torchao.prototype.mx_formats.mx_tensor import to_dtype, to_mx
    except Exception:  # noqa: BLE001 - optional peer, any import failure means absent
        return
    elem = torch.float8_e4m3fn if fmt == "mxfp8" else torch.float4_e2m1fn_x2
    if quantize:
        base["torchao to_mx"] = lambda: to_mx(x, elem, 32)
    else:
        scale, data = to_mx(x, elem, 32)
        base["torchao to_dtype"] = lambda: to_dtype(data, scale, elem, 32, x.dtype)


def bitsandbytes_nf4_peer(base: dict, x, quantize: bool) -> None:
    """bitsandbytes' ``quantize_4bit(quant_type="nf4", blocksize=64)``, when importable."""
    try:
        import bitsandbytes.functional as bnb
    except Exception:  # noqa: BLE001 - optional peer, any import failure means absent
        return
    if quantize:
        base["bitsandbytes nf4"] = lambda: bnb.quantize_4bit(x, blocksize=64, quant_type="nf4")
    else:
        packed, state = bnb.quantize_4bit(x, blocksize=64, quant_type="nf4")
        base["bitsandbytes nf4"] = lambda: bnb.dequantize_4bit(packed, state)
