"""The weight quantization methods of gq.quantize_model and their parameters."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import QuantizationError

__all__ = ["RTN", "HQQ", "GPTQ", "as_method"]


@dataclasses.dataclass(frozen=True)
class RTN:
    """Round-to-nearest under the config's own calibration (min/max, MSE search, ...)."""

    name = "rtn"


@dataclasses.dataclass(frozen=True)
class HQQ:
    """Half-Quadratic Quantization (Badri & Shaji 2023), weights only, no data.

    Proximal steps as hqq/core/optimize.py: the quantization error is split into a
    sparse part (the shrinkage of an l_p norm, ``p``) and the rest, and scale and
    zero point are refit to the rest; ``beta`` grows by ``kappa`` each step, at most
    ``iters`` steps, stopping when the mean absolute error stops falling.
    ``mse_start``: run the steps also from the MSE search's qparams (each unit keeps
    its least weight error over both runs).
    """

    p: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iters: int = 20
    mse_start: bool = True
    name = "hqq"


@dataclasses.dataclass(frozen=True)
class GPTQ:
    """GPTQ (Frantar et al. 2022) from the layer inputs of ``calibration=``.

    ``damp``: fraction of the mean Hessian diagonal added to it; ``block_size``:
    columns per lazy batch update; ``act_order``: columns in descending diag(H)
    (with static groups: each group's qparams from the original weights);
    ``precision``: "float64" (NumPy, the reference) or "float32" (torch, on the
    weight's device); None takes float64 on the CPU and float32 elsewhere;
    ``group``: the torch.distributed process group whose ranks' Hessians are
    summed (None: the default group when one is initialised).
    """

    damp: float = 0.01
    block_size: int = 128
    act_order: bool = False
    precision: str | None = None
    group: Any = None
    name = "gptq"

    def __post_init__(self) -> None:
        if self.precision not in (None, "float32", "float64"):
            raise QuantizationError(f"precision={self.precision!r}; accepted: None, 'float32', "
                                    "'float64'")
        if not (isinstance(self.block_size, int) and self.block_size >= 1):
            raise QuantizationError(f"block_size={self.block_size!r} must be an integer >= 1")
        if not 0 <= self.damp < 1:
            raise QuantizationError(f"damp={self.damp!r} must lie in [0, 1)")


_NAMES = {"rtn": RTN, "hqq": HQQ, "gptq": GPTQ}


def as_method(method: Any):
    if isinstance(method, (RTN, HQQ, GPTQ)):
        return method
    if isinstance(method, str) and method.lower() in _NAMES:
        return _NAMES[method.lower()]()
    raise QuantizationError(f"method={method!r} is not supported; accepted: 'rtn', 'hqq', "
                            "'gptq', or gq.model.HQQ(...) / gq.model.GPTQ(...)")
