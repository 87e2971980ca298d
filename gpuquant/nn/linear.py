"""QuantizedLinear: an ``nn.Linear`` whose weight is a gpuquant QuantizedTensor.

The codes, scales and zero points are buffers (``qdata``, ``scale``,
``zero_point``), so ``.to(device)``, ``state_dict()`` and
``load_state_dict()`` handle them as any other buffer; the config, shape and
dtype travel as the module's extra state. ``forward`` dequantizes through
the ``gpuquant::dequantize`` operator (gpuquant.torch_ops): one code path for
eager calls and ``torch.compile(fullgraph=True)``, no graph break. Eager
calls write into a workspace shared by every QuantizedLinear of a device and
dtype and thread (reused, not one float weight per layer; not when autograd records the
input, which keeps the weight for the backward pass). With ``activations="int8"``
and a symmetric int8 per-channel (axis 0) or per-tensor weight, the product
is ``torch._int_mm`` of int8 per-token activations and int8 codes (W8A8).
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import torch_ops  # registers torch.ops.gpuquant
from ..config import QuantConfig
from ..core.frameworks import TensorInfo
from ..core.layout import Layout
from ..errors import InvalidShapeError, QuantizationError, UnsupportedSchemeError
from ..quantize import quantize
from ..tensor import QuantizedTensor

__all__ = ["QuantizedLinear", "ACTIVATIONS"]

ACTIVATIONS = (None, "int8")
_TOKEN_INT8 = QuantConfig(scheme="int8", granularity="token", symmetric=True)
_workspaces: dict[tuple, torch.Tensor] = {}  # (device, dtype, thread) -> flat buffer, grown


def _workspace(numel: int, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
    key = (str(device), dtype, threading.get_ident())
    buf = _workspaces.get(key)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, device=device, dtype=dtype)
        _workspaces[key] = buf
    return buf[:numel].view(shape)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


class QuantizedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held as a :class:`QuantizedTensor` (``.qweight``).

    Build one with :meth:`from_linear` (round-to-nearest of an ``nn.Linear``) or
    :meth:`from_quantized` (a QuantizedTensor made elsewhere: GPTQ, HQQ).
    ``activations``: None (dequantize the weight, ``F.linear``) or ``"int8"``
    (dynamic per-token int8 activations; ``torch._int_mm`` where the weight is
    int8 symmetric per channel on axis 0 or per tensor, else the dequantized
    activations and weight).
    """

    def __init__(self, qweight: QuantizedTensor, bias: torch.Tensor | None = None,
                 activations: str | None = None):
        super().__init__()
        if not isinstance(qweight, QuantizedTensor) or qweight.framework != "torch":
            raise QuantizationError("qweight must be a QuantizedTensor of torch tensors, got "
                                    f"{type(qweight).__name__}")
        if qweight.ndim != 2:
            raise InvalidShapeError(f"qweight has shape {qweight.shape}; a Linear weight is 2-D")
        if activations not in ACTIVATIONS:
            raise UnsupportedSchemeError(f"activations={activations!r}; accepted: None, 'int8'")
        self.out_features, self.in_features = qweight.shape
        self.activations = activations
        self.register_buffer("qdata", qweight.data)
        self.register_buffer("scale", qweight.scale)
        self.register_buffer("zero_point", qweight.zero_point)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)
        self._set_meta(qweight.config, qweight.dtype)

    def _set_meta(self, config: QuantConfig, dtype: str) -> None:
        self.config, self.weight_dtype = config, dtype
        self._args = torch_ops.config_args(config)
        self._layout = Layout.of((self.out_features, self.in_features), config)
        self._torch_dtype = getattr(torch, dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig,
                    activations: str | None = None) -> QuantizedLinear:
        """Round-to-nearest of ``linear.weight`` under ``config`` (its calibration)."""
        qt = quantize(linear.weight.detach(), config)
        return cls(qt, linear.bias, activations)

    @classmethod
    def from_quantized(cls, qweight: QuantizedTensor, bias: torch.Tensor | None = None,
                       activations: str | None = None) -> QuantizedLinear:
        return cls(qweight, bias, activations)

    # -------------------------------------------------------------- weight
    @property
    def qweight(self) -> QuantizedTensor:
        """The weight as a QuantizedTensor over this module's buffers (no copy)."""
        shape = (self.out_features, self.in_features)
        device = "cpu" if self.qdata.device.type == "cpu" else str(self.qdata.device)
        info = TensorInfo("torch", self.weight_dtype, shape, device)
        return QuantizedTensor._from_parts(self.qdata, self.scale, self.zero_point, shape,
                                           self.weight_dtype, self.config, info, self._layout)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight (a new tensor) in ``dtype`` (default: the original dtype)."""
        return self._dequantize(dtype or self._torch_dtype, reuse=False)

    def _dequantize(self, dtype: torch.dtype, reuse: bool) -> torch.Tensor:
        shape = [self.out_features, self.in_features]
        ops = torch.ops.gpuquant
        if reuse and not _compiling():
            out = _workspace(shape[0] * shape[1], tuple(shape), self.qdata.device, dtype)
            ops.dequantize_out(self.qdata, self.scale, self.zero_point, shape, dtype,
                               *self._args, out)
            return out
        return ops.dequantize(self.qdata, self.scale, self.zero_point, shape, dtype, *self._args)

    # ------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations == "int8":
            return self._forward_w8a8(x)
        # autograd keeps the weight for the backward pass: then not the shared workspace
        w = self._dequantize(x.dtype, reuse=not (x.requires_grad and torch.is_grad_enabled()))
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _int_mm_applies(self, rows: int) -> bool:
        cfg = self.config
        if not (cfg.bits == 8 and cfg.symmetric and (cfg.granularity.value == "tensor" or (
                cfg.granularity.value == "channel" and self._layout.axis == 0))):
            return False
        if self.qdata.device.type == "cuda":  # cuBLAS int8: rows > 16, sizes multiple of 8
            return rows > 16 and self.in_features % 8 == 0 and self.out_features % 8 == 0
        return True

    def _forward_w8a8(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        qx = quantize(x2, _TOKEN_INT8)  # codes int8 (rows, in), scale (rows,)
        if self._int_mm_applies(x2.shape[0]):
            acc = torch._int_mm(qx.data, self.qdata.t())
            wscale = self.scale.reshape(1, -1) if self.scale.ndim else self.scale
            y = acc.to(torch.float32) * qx.scale.reshape(-1, 1) * wscale
        else:
            xq = qx.data.to(torch.float32) * qx.scale.reshape(-1, 1)
            y = F.linear(xq, self._dequantize(torch.float32, reuse=True))
        if self.bias is not None:
            y = y + self.bias.to(torch.float32)
        return y.to(x.dtype).reshape(*lead, self.out_features)

    def _apply(self, fn, recurse=True):
        # model.half() / .to(torch.bfloat16) converts floating buffers: the scales stay float32
        scale = self.scale
        out = super()._apply(fn, recurse)
        if self.scale.dtype != torch.float32:
            self.scale = scale.to(self.scale.device)
        return out

    # ---------------------------------------------------------- state dict
    def get_extra_state(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "dtype": self.weight_dtype,
                "shape": [self.out_features, self.in_features], "activations": self.activations}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or {"config", "dtype", "shape"} - set(state):
            raise QuantizationError("QuantizedLinear state: expected config, dtype and shape "
                                    f"in the extra state, got {state!r}")
        shape = tuple(int(s) for s in state["shape"])
        if shape != (self.out_features, self.in_features):
            raise InvalidShapeError(f"QuantizedLinear state is for a weight {shape}, this "
                                    f"module holds {(self.out_features, self.in_features)}")
        self.activations = state.get("activations")
        self._set_meta(QuantConfig.from_dict(state["config"]), state["dtype"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a different config (int8 instead of int4, another group size) has other buffer shapes
        for name in ("qdata", "scale", "zero_point"):
            value = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(value, torch.Tensor) and (value.shape != current.shape
                                                    or value.dtype != current.dtype):
                setattr(self, name, torch.empty_like(value, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        act = f", activations={self.activations!r}" if self.activations else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, config={self.config.describe()}{act}")
