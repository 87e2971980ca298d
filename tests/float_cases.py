"""Shared by the float-format kernel tests and their sm_90 compile script: a stand-in config
with the attributes of the float-format interface, edge values, small tensor helpers.
Imports no conftest (the compile script must not set TRITON_INTERPRET)."""

import dataclasses

import numpy as np
import torch

F8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
FMAX = {"fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}


@dataclasses.dataclass
class Cfg:
    """A stand-in with the attributes of the float-format interface (until QuantConfig has them)."""

    element: str = "fp8_e4m3"
    scale_format: str = "float32"
    granularity: str = "tensor"
    group_size: int = 128
    block_shape: tuple | None = None
    scale_rule: str = "floor"
    axis: int = 0
    global_scale_convention: str = "compressed_tensors"
    double_quant: bool = False



EDGES = [0.0, -0.0, 1e-45, -1e-45, 1e-40, 1e-38, 2.0**-10, 2.0**-9, 3 * 2.0**-10, 2.0**-7 * 1.5,
         2.0**-6, 2.0**-16, 2.0**-17, 3 * 2.0**-17, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, 5.5,
         1.0625, 1.1875, 447.0, 448.0, 449.0, 464.0, 480.0, 6.0, 7.0, 57344.0, 61440.0, 1e6,
         float("inf"), -float("inf"), float("nan"), -float("nan"), 0.3, -0.3]


def edge_values(rng, device, n=600):
    r = (rng.standard_normal(n) * np.exp(rng.uniform(-18, 12, n))).astype(np.float32)
    return torch.from_numpy(np.concatenate([np.float32(EDGES), r])).to(device)



def same_floats(a, b):
    """Equal bits up to NaN payloads: NaN at the same places, the rest equal."""
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b))


def pad_last(x, m):
    """x zero padded along the last axis to a multiple of m."""
    k = x.shape[-1]
    return torch.nn.functional.pad(x, (0, -(-k // m) * m - k))


def unpack_low_first(packed, k):
    """The 4-bit codes of bytes holding the even element in the low nibble, k per row."""
    lo, hi = packed & 0xF, packed >> 4
    return torch.stack([lo, hi], -1).reshape(*packed.shape[:-1], -1)[..., :k]
