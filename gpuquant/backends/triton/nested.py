"""Host runners of NF4's double quantization on torch tensors (kernels/nested_absmax.py).

``nest(absmax) -> (codes, nested_absmax, nested_offset)`` and
``unnest(codes, nested_absmax, nested_offset) -> absmax`` follow the NumPy reference
(gpuquant/formats/reference.py: nest_absmax, unnest_absmax), bit for bit. The offset stays
on the device (no copy to the host); the dynamic map and its 65536-bin table are copied to
each device once and kept.
"""

from __future__ import annotations

import torch
import triton

from ...errors import InvalidDtypeError, InvalidShapeError
from ...formats.codecs import DYNAMIC_LUT, DYNAMIC_MAP
from ...formats.reference import MEAN_ROW, NESTED_BLOCK, nested_shape
from ...kernels import nested_absmax as _nk
from .launch import launch

__all__ = ["nest", "unnest"]

_TABLES: dict[str, tuple] = {}  # device -> (the 65536-bin LUT uint8, the dynamic map float32)
UNNEST_BLOCK = 1024


def _tables(device) -> tuple:
    key = str(device)
    if key not in _TABLES:
        _TABLES[key] = (torch.from_numpy(DYNAMIC_LUT.copy()).to(device),
                        torch.from_numpy(DYNAMIC_MAP.copy()).to(device))
    return _TABLES[key]


def nest(absmax):
    """(uint8 codes, float32 nested_absmax, float32 0-d offset) of float32 NF4 absmax."""
    a = absmax.reshape(-1)
    n = a.numel()
    offset = torch.empty((), dtype=torch.float32, device=a.device)
    codes = torch.empty(n, dtype=torch.uint8, device=a.device)
    nested = torch.empty(nested_shape(n), dtype=torch.float32, device=a.device)
    launch(_nk.mean_kernel, (1,), a, offset, n, num_warps=4, ROW=MEAN_ROW,
           LOG_ROW=MEAN_ROW.bit_length() - 1)
    launch(_nk.nest_kernel, (nested.numel(),), a, offset, _tables(a.device)[0], codes, nested, n,
           num_warps=4)
    return codes, nested, offset


def unnest(codes, nested, offset):
    """float32 absmax of double-quantized NF4 parts: MAP[code] * nested_absmax + offset."""
    n = codes.numel()
    if codes.dtype != torch.uint8 or nested.dtype != torch.float32 or offset.dtype != torch.float32:
        raise InvalidDtypeError(f"codes {codes.dtype} / nested_absmax {nested.dtype} / nested_offset "
                                f"{offset.dtype}: double-quantized NF4 stores uint8, float32, float32")
    if tuple(nested.shape) != nested_shape(n) or offset.numel() != 1:
        raise InvalidShapeError(f"nested_absmax {tuple(nested.shape)} / nested_offset "
                                f"{tuple(offset.shape)}: {n} absmax codes need "
                                f"{nested_shape(n)} (one per {NESTED_BLOCK}) and ()")
    out = torch.empty(n, dtype=torch.float32, device=codes.device)
    launch(_nk.unnest_kernel, (triton.cdiv(n, UNNEST_BLOCK),), codes.contiguous(),
           nested.contiguous(), offset.reshape(1), _tables(codes.device)[1], out, n, num_warps=4,
           BLOCK=UNNEST_BLOCK)
    return out
