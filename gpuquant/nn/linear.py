"""QuantizedLinear: an ``nn.Linear`` whose weight is a gpuquant QuantizedTensor.

The parts of the weight are buffers: ``qdata`` and ``scale``, then ``zero_point`` (integer
formats) or the float formats' extra parts (``global_scale`` of NVFP4, ``nested_absmax``
and ``nested_offset`` of a double-quantized NF4: gpuquant.formats.parts.extra_names), so
``.to(device)``, ``state_dict()`` and ``load_state_dict()`` handle them as any other buffer;
the config, shape and dtype travel as the module's extra state. ``forward`` dequantizes
through the ``gpuquant::dequantize`` / ``gpuquant::dequantize_float`` operators: one code path
for eager calls and ``torch.compile(fullgraph=True)``, no graph break (a double-quantized NF4
has no operator: it dequantizes eagerly, a graph break under torch.compile). Eager calls
write into a workspace shared by every QuantizedLinear of a device and dtype and thread
(reused, not one float weight per layer; not when autograd records the input, which keeps
the weight for the backward pass). ``activations="int8"`` (W8A8 through ``torch._int_mm``)
and ``"fp8"`` (dynamic FP8 through ``torch._scaled_mm``): gpuquant.nn.activations.
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
from ..errors import InvalidShapeError, QuantizationError
from ..formats import ops as float_ops  # registers the float operators
from ..formats.parts import EXTRA_PARTS, extra_names
from ..quantize import quantize
from ..tensor import QuantizedTensor
from . import activations as act

__all__ = ["QuantizedLinear", "ACTIVATIONS"]

ACTIVATIONS = act.ACTIVATIONS
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


def _part_names(config: QuantConfig) -> tuple[str, ...]:
    """The buffers of a weight under ``config``, in their order."""
    if config.is_float:
        return ("qdata", "scale", *extra_names(config))
    return ("qdata", "scale", "zero_point")


class QuantizedLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held as a :class:`QuantizedTensor` (``.qweight``).

    Build one with :meth:`from_linear` (round-to-nearest of an ``nn.Linear``) or
    :meth:`from_quantized` (a QuantizedTensor made elsewhere: GPTQ, HQQ), under any
    integer or float config. ``activations``: None (dequantize the weight, ``F.linear``),
    ``"int8"`` (dynamic per-token int8 activations; ``torch._int_mm`` where the weight is
    int8 symmetric per channel on axis 0 or per tensor, else the dequantized activations and
    weight) or ``"fp8"`` (FP8 e4m3 weights per tensor or per channel on axis 0 only: vLLM's
    dynamic per-token FP8 activations; ``torch._scaled_mm`` where it applies, see
    gpuquant.nn.activations, else the dequantized activations and weight).
    """

    cpu_scaled_mm = False  # True: take torch._scaled_mm on the CPU too (not bit-exact)

    def __init__(self, qweight: QuantizedTensor, bias: torch.Tensor | None = None,
                 activations: str | None = None):
        super().__init__()
        if not isinstance(qweight, QuantizedTensor) or qweight.framework != "torch":
            raise QuantizationError("qweight must be a QuantizedTensor of torch tensors, got "
                                    f"{type(qweight).__name__}")
        if qweight.ndim != 2:
            raise InvalidShapeError(f"qweight has shape {qweight.shape}; a Linear weight is 2-D")
        act.check(activations, qweight.config)
        self.out_features, self.in_features = qweight.shape
        self.activations = activations
        for name in _part_names(qweight.config):
            self.register_buffer(name, getattr(qweight, "data" if name == "qdata" else name))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(),
                                                           requires_grad=False)
        self._set_meta(qweight.config, qweight.dtype)

    def _set_meta(self, config: QuantConfig, dtype: str) -> None:
        self.config, self.weight_dtype = config, dtype
        shape = (self.out_features, self.in_features)
        if config.is_float:
            self._args, self._layout = float_ops.config_args(config), None
        else:
            self._args, self._layout = torch_ops.config_args(config), Layout.of(shape, config)
        self._torch_dtype = getattr(torch, dtype)
        self._cuda_capability = act.cuda_capability(self.qdata.device)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QuantConfig,
                    activations: str | None = None) -> QuantizedLinear:
        """Round-to-nearest of ``linear.weight`` under ``config`` (its calibration)."""
        act.check(activations, config)
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
        if self.config.is_float:
            extras = {name: getattr(self, name) for name in extra_names(self.config)}
            return QuantizedTensor._from_float(self.qdata, self.scale, extras, info, self.config)
        return QuantizedTensor._from_parts(self.qdata, self.scale, self.zero_point, shape,
                                           self.weight_dtype, self.config, info, self._layout)

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The float weight (a new tensor) in ``dtype`` (default: the original dtype)."""
        return self._dequantize(dtype or self._torch_dtype, reuse=False)

    def _dequantize(self, dtype: torch.dtype, reuse: bool) -> torch.Tensor:
        shape = [self.out_features, self.in_features]
        if self.config.double_quant:  # no operator: eagerly (a graph break when compiled)
            return _dequantize_double_quant(self, dtype)
        ops = torch.ops.gpuquant
        if self.config.is_float:
            args = (self.qdata, self.scale, getattr(self, "global_scale", None), shape, dtype,
                    *self._args)
            op, op_out = ops.dequantize_float, ops.dequantize_float_out
        else:
            args = (self.qdata, self.scale, self.zero_point, shape, dtype, *self._args)
            op, op_out = ops.dequantize, ops.dequantize_out
        if reuse and not _compiling():
            out = _workspace(shape[0] * shape[1], tuple(shape), self.qdata.device, dtype)
            op_out(*args, out)
            return out
        return op(*args)

    # ------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activations == "int8":
            return act.forward_w8a8(self, x)
        if self.activations == "fp8":
            return act.forward_fp8(self, x)
        # autograd keeps the weight for the backward pass: then not the shared workspace
        w = self._dequantize(x.dtype, reuse=not (x.requires_grad and torch.is_grad_enabled()))
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))

    def _int_mm_applies(self, rows: int) -> bool:
        return act.int_mm_applies(self, rows)

    def _scaled_mm_applies(self, x: torch.Tensor) -> bool:
        return act.scaled_mm_applies(self, x)

    def _apply(self, fn, recurse=True):
        # model.half() / .to(torch.bfloat16) converts floating buffers: the float32 parts
        # (scales, global scale, nested absmax and offset) stay float32
        kept = {name: t for name in ("scale", *EXTRA_PARTS)
                if isinstance(t := getattr(self, name, None), torch.Tensor)
                and t.dtype == torch.float32}
        out = super()._apply(fn, recurse)
        for name, t in kept.items():
            if getattr(self, name).dtype != torch.float32:
                setattr(self, name, t.to(getattr(self, name).device))
        self._cuda_capability = act.cuda_capability(self.qdata.device)
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
        config = QuantConfig.from_dict(state["config"])
        act.check(state.get("activations"), config)
        self.activations = state.get("activations")
        self._set_meta(config, state["dtype"])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # another config (int8 instead of int4, a float format, another group size) has other
        # buffers, of other shapes: make them as the incoming state has them
        state = state_dict.get(prefix + "_extra_state")
        if isinstance(state, dict) and isinstance(state.get("config"), dict):
            names = _part_names(QuantConfig.from_dict(state["config"]))
            device = self.qdata.device
            for name in ("zero_point", *EXTRA_PARTS):
                if name not in names and name in self._buffers:
                    del self._buffers[name]
            for name in names:
                if name not in self._buffers:
                    self.register_buffer(name, torch.empty(0, device=device))
        for name in self._buffers:
            value = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(value, torch.Tensor) and (value.shape != current.shape
                                                    or value.dtype != current.dtype):
                setattr(self, name, torch.empty_like(value, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        act_ = f", activations={self.activations!r}" if self.activations else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, config={self.config.describe()}{act_}")


@torch.compiler.disable(reason="a double-quantized NF4 weight has no torch operator: it "
                        "dequantizes eagerly (gq.QuantConfig.nf4() without double_quant has one)")
def _dequantize_double_quant(module: QuantizedLinear, dtype: torch.dtype) -> torch.Tensor:
    """A double-quantized NF4 weight, through QuantizedTensor.dequantize: eagerly, outside
    any graph torch.compile traces (a graph break; fullgraph=True refuses it)."""
    return module.qweight.dequantize(dtype=str(dtype)[6:])
