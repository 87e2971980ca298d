"""Dynamic quantization of activations: calibrate and quantize each call.

FP8 e4m3 per token or per 1 x group_size group follows vLLM's dynamic activation quantizers
(gpuquant.formats.reference.fp8_dynamic): the Triton kernel on torch CUDA / CuPy inputs, the
NumPy reference on the CPU, the ``gpuquant::dynamic_fp8`` operator under torch.compile.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import QuantConfig
from .errors import QuantizationError, UnsupportedSchemeError
from .quantize import quantize
from .tensor import QuantizedTensor

__all__ = ["DynamicQuantizer"]


class DynamicQuantizer:
    """Quantize activations with min/max ranges computed on the fly.

    Args:
        scheme: "int4", "int8", "int16", "fp8_e4m3" or "fp8_e5m2".
        symmetric: signed codes with zero point 0, else unsigned codes.
        per_token: False (default): one scale for the whole tensor. True: one
            scale per row over the last axis, of shape ``x.shape[:-1]``.
        group_size: one scale per run of ``group_size`` along the last axis (per token
            group, e.g. 128: shape ``(*x.shape[:-1], ceil(K / group_size))``); None: none.
        ignore_nonfinite: skip NaN/Inf when computing ranges instead of raising.
        backend: None picks by where the data lives.

    ``scheme="fp8_e4m3"`` per token or per group takes vLLM's scales (``floors == "vllm"``):
    per token ``max(amax / 448, 1 / (448 * 512))``, per group ``max(amax, 1e-10) / 448``.
    The result's config is the plain FP8 token / group config (``QuantConfig.fp8_per_token``,
    ``fp8_per_group``): dequantization is codes * scale whatever floor chose the scale, and
    the bits equal gq.quantize's under that config except in rows (groups) whose amax is
    below 1 / 512 (1e-10), where gq.quantize takes amax / 448 (zero: float32 eps).
    """

    def __init__(self, scheme: str = "int8", symmetric: bool = True, per_token: bool = False,
                 nibble_order: str = "high_first", ignore_nonfinite: bool = False,
                 backend: str | None = None, group_size: int | None = None):
        if not isinstance(per_token, (bool, np.bool_)):
            raise QuantizationError(f"per_token must be True or False, got {per_token!r}")
        gran = "group" if group_size is not None else "token" if per_token else "tensor"
        self.config = QuantConfig(scheme=scheme, symmetric=symmetric, granularity=gran,
                                  group_size=group_size, nibble_order=nibble_order,
                                  ignore_nonfinite=ignore_nonfinite)
        self.backend = backend
        self.floors = None
        if self.config.element == "fp8_e4m3" and gran != "tensor":
            if ignore_nonfinite:
                raise UnsupportedSchemeError(
                    "ignore_nonfinite=True is not supported with vLLM's dynamic FP8 (fp8_e4m3 "
                    "per token or group): a row holding NaN gets the floor scale and NaN codes")
            self.config = (QuantConfig.fp8_per_group(self.config.group_size)
                           if gran == "group" else QuantConfig.fp8_per_token())
            self.floors = "vllm"

    @property
    def per_token(self) -> bool:
        return self.config.granularity.value == "token"

    @property
    def group_size(self) -> int | None:
        return self.config.group_size

    def __call__(self, x: Any, out: tuple | None = None) -> QuantizedTensor:
        """Quantize ``x`` with ranges of its own values (per tensor, or per row with
        ``per_token``, or per group). ``out``: preallocated ``(codes, scale, zero_point)`` to
        write into (see :func:`gq.quantize`; not for vLLM's FP8). A NaN found by an earlier GPU
        call is raised here."""
        if self.floors is None:
            return quantize(x, self.config, backend=self.backend, out=out)
        if out is not None:
            raise UnsupportedSchemeError("out= is not supported for dynamic FP8 (fp8_e4m3 per "
                                         "token or group): it returns new codes and scales")
        return _vllm_fp8(x, self.config, self.backend)

    quantize = __call__

    def __repr__(self) -> str:
        cfg = self.config
        group = f", group_size={cfg.group_size}" if cfg.granularity.value == "group" else ""
        return (f"DynamicQuantizer(scheme={cfg.scheme.value!r}, symmetric={cfg.symmetric}, "
                f"per_token={self.per_token}{group})")


def _vllm_fp8(x: Any, config: QuantConfig, backend: str | None) -> QuantizedTensor:
    """vLLM's dynamic FP8 of ``x``: the gpuquant::dynamic_fp8 operator for a torch tensor on
    its device's own backend (traceable by torch.compile), else gpuquant.formats.parts."""
    from .core.frameworks import framework_of

    if framework_of(x) == "torch":
        import torch

        from .formats import ops  # noqa: F401  (registers torch.ops.gpuquant.dynamic_fp8)
        from .torch_ops import BACKENDS, torch_info

        if backend in (None, BACKENDS.get(x.device.type)):
            codes, scale = torch.ops.gpuquant.dynamic_fp8(x, config.group_size or 0)
            info = torch_info(x.device, str(x.dtype)[6:], tuple(x.shape))
            return QuantizedTensor._from_float(codes, scale, {}, info, config)
    from .formats.parts import dynamic_fp8_parts

    codes, scale, info = dynamic_fp8_parts(x, config, backend)
    return QuantizedTensor._from_float(codes, scale, {}, info, config)
