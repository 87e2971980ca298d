"""Quantized activations of gq.nn.QuantizedLinear: W8A8 (``torch._int_mm``) and dynamic FP8
(``torch._scaled_mm``), each with its fallback through the dequantized parts.

``activations="fp8"`` takes FP8 e4m3 weights per tensor or per channel on axis 0 (float32
scales) and quantizes each input row with vLLM's dynamic per-token FP8 e4m3
(``gpuquant::dynamic_fp8``: s_x = max(amax_row / 448, 1 / (448 * 512)), codes
e4m3(clamp(x / s_x, +-448))). ``torch._scaled_mm(codes_x, codes_w.t(), scale_a=s_x[:, None],
scale_b=s_w[None, :])`` (rowwise scales; a per-tensor weight scale expanded to (1, N)) is
taken on CUDA devices of compute capability >= 8.9 for bfloat16 inputs (the output type of
torch's rowwise kernel, f8f8bf16) when K and N are multiples of 16 (torch's
meta_scaled_mm: mat1 row-major with size(1) % 16 == 0, mat2 column-major with both sizes
% 16 == 0; rowwise scales float32, contiguous, (M, 1) and (1, N)). On the CPU, torch's
``_scaled_mm`` (oneDNN) sums the float32 products in another order than ``F.linear``, so it
is taken only with ``QuantizedLinear.cpu_scaled_mm = True``. Otherwise: ``F.linear`` of the
dequantized activations (codes_x * s_x, float32) and weight (float32), the bias added in
float32, the result cast to x's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..config import QuantConfig
from ..errors import UnsupportedSchemeError
from ..quantize import quantize

__all__ = ["ACTIVATIONS", "check", "int_mm_applies", "forward_w8a8", "fp8_weight",
           "scaled_mm_applies", "forward_fp8", "cuda_capability"]

ACTIVATIONS = (None, "int8", "fp8")
_TOKEN_INT8 = QuantConfig(scheme="int8", granularity="token", symmetric=True)
_capability: dict[str, tuple[int, int]] = {}  # CUDA device -> compute capability


def check(activations, config: QuantConfig) -> None:
    """UnsupportedSchemeError unless ``activations`` is accepted for weights under ``config``."""
    if activations not in ACTIVATIONS:
        raise UnsupportedSchemeError(f"activations={activations!r}; accepted: None, 'int8', "
                                     "'fp8'")
    if activations == "fp8" and not fp8_weight(config):
        raise UnsupportedSchemeError(
            f"activations='fp8' takes FP8 e4m3 weights per tensor or per channel on axis 0 "
            f"(QuantConfig.fp8_per_tensor(), fp8_per_channel()), not {config.describe()}; "
            "use activations=None or 'int8'")


def fp8_weight(config: QuantConfig) -> bool:
    """FP8 e4m3 with float32 scales per tensor or per row (channel, axis 0 of a 2-D weight)."""
    gran = config.granularity.value
    return (config.element == "fp8_e4m3" and config.scale_format == "float32"
            and (gran == "tensor" or gran == "channel" and config.axis in (0, -2)))


def int_mm_applies(module, rows: int) -> bool:
    cfg = module.config
    if cfg.is_float or not (cfg.bits == 8 and cfg.symmetric and (
            cfg.granularity.value == "tensor"
            or cfg.granularity.value == "channel" and module._layout.axis == 0)):
        return False
    if module.qdata.device.type == "cuda":  # cuBLAS int8: rows > 16, sizes multiple of 8
        return rows > 16 and module.in_features % 8 == 0 and module.out_features % 8 == 0
    return True


def _finish(module, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """float32 y plus the bias in float32, in x's dtype and leading shape."""
    if module.bias is not None:
        y = y + module.bias.to(torch.float32)
    return y.to(x.dtype).reshape(*x.shape[:-1], module.out_features)


def forward_w8a8(module, x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, module.in_features)
    qx = quantize(x2, _TOKEN_INT8)  # codes int8 (rows, in), scale (rows,)
    if int_mm_applies(module, x2.shape[0]):
        acc = torch._int_mm(qx.data, module.qdata.t())
        wscale = module.scale.reshape(1, -1) if module.scale.ndim else module.scale
        y = acc.to(torch.float32) * qx.scale.reshape(-1, 1) * wscale
    else:
        xq = qx.data.to(torch.float32) * qx.scale.reshape(-1, 1)
        y = F.linear(xq, module._dequantize(torch.float32, reuse=True))
    return _finish(module, y, x)


def scaled_mm_applies(module, x: torch.Tensor) -> bool:
    """Whether forward_fp8 takes torch._scaled_mm for ``x`` (see the module's docstring)."""
    device = module.qdata.device
    if device.type == "cpu":
        return bool(module.cpu_scaled_mm)
    if device.type != "cuda" or x.dtype != torch.bfloat16:
        return False
    # read where the module was placed (QuantizedLinear._apply), not while torch.compile traces
    return (module._cuda_capability >= (8, 9) and module.in_features % 16 == 0
            and module.out_features % 16 == 0)


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """The compute capability of a CUDA device, (0, 0) for another device."""
    if device.type != "cuda":
        return (0, 0)
    key = str(device)
    if key not in _capability:
        _capability[key] = tuple(torch.cuda.get_device_capability(device))
    return _capability[key]


def forward_fp8(module, x: torch.Tensor) -> torch.Tensor:
    x2 = x.reshape(-1, module.in_features)
    codes, s_x = torch.ops.gpuquant.dynamic_fp8(x2, 0)  # uint8 (rows, in), float32 (rows,)
    qx = codes.view(torch.float8_e4m3fn)
    if scaled_mm_applies(module, x):
        n, s_w = module.out_features, module.scale
        scale_b = s_w.reshape(1, 1).expand(1, n).contiguous() if s_w.ndim == 0 else s_w.reshape(1, n)
        out_dtype = torch.float32 if x2.device.type == "cpu" else torch.bfloat16
        y = torch._scaled_mm(qx, module.qdata.view(torch.float8_e4m3fn).t(),
                             scale_a=s_x.reshape(-1, 1), scale_b=scale_b, out_dtype=out_dtype)
        y = y.to(torch.float32)
    else:
        xd = qx.to(torch.float32) * s_x.reshape(-1, 1)
        y = F.linear(xd, module._dequantize(torch.float32, reuse=True))
    return _finish(module, y, x)
