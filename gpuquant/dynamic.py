"""Dynamic quantization of activations: calibrate and quantize each call."""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import QuantConfig
from .errors import QuantizationError
from .quantize import quantize
from .tensor import QuantizedTensor

__all__ = ["DynamicQuantizer"]


class DynamicQuantizer:
    """Quantize activations with min/max ranges computed on the fly.

    Args:
        scheme: "int4", "int8" or "int16".
        symmetric: signed codes with zero point 0, else unsigned codes.
        per_token: False (default): one scale for the whole tensor. True: one
            scale per row over the last axis, of shape ``x.shape[:-1]``.
        ignore_nonfinite: skip NaN/Inf when computing ranges instead of raising.
        backend: None picks by where the data lives.
    """

    def __init__(self, scheme: str = "int8", symmetric: bool = True, per_token: bool = False,
                 nibble_order: str = "high_first", ignore_nonfinite: bool = False,
                 backend: str | None = None):
        if not isinstance(per_token, (bool, np.bool_)):
            raise QuantizationError(f"per_token must be True or False, got {per_token!r}")
        self.config = QuantConfig(scheme=scheme, symmetric=symmetric,
                                  granularity="token" if per_token else "tensor",
                                  nibble_order=nibble_order, ignore_nonfinite=ignore_nonfinite)
        self.backend = backend

    @property
    def per_token(self) -> bool:
        return self.config.granularity.value == "token"

    def __call__(self, x: Any, out: tuple | None = None) -> QuantizedTensor:
        """Quantize ``x`` with ranges of its own values (per tensor, or per row with
        ``per_token``). ``out``: preallocated ``(codes, scale, zero_point)`` to write into
        (see :func:`gq.quantize`). A NaN found by an earlier GPU call is raised here."""
        return quantize(x, self.config, backend=self.backend, out=out)

    quantize = __call__

    def __repr__(self) -> str:
        cfg = self.config
        return (f"DynamicQuantizer(scheme={cfg.scheme.value!r}, symmetric={cfg.symmetric}, "
                f"per_token={self.per_token})")
