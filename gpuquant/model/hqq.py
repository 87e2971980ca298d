"""HQQ: half-quadratic quantization of a weight, within gpuquant's contract.

hqq/core/optimize.py alternates (1) codes by round-to-nearest, (2) the sparse
part W_e of the error W - W_r by the generalised shrinkage of an l_p norm
(p = 0.7), (3) a new zero point from W - W_e, with beta growing by kappa and an
early stop when the mean absolute error stops falling. gpuquant's zero points
are integers and 0.0 must stay exact, so step (3) refits both scale and zero
point to W - W_e by least squares over the codes (slope and intercept; the zero
point rounded to an integer in the code range, then the scale refit for it;
symmetric configs refit the scale only). Each unit (group, channel, tensor)
keeps the step whose weight error (sum of squares under the contract's
quantize/dequantize) is least. The steps start from the config's own calibration
and (``HQQ(mse_start=True)``, the default) again from gpuquant's MSE search, so HQQ
is never worse in weight MSE than round-to-nearest of the same config, nor than
round-to-nearest with the MSE search.

The same code runs on NumPy (the CPU, torch CPU tensors included) and on torch
tensors on a GPU, in float32; sums of the two may differ in the last bits
(different order).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..calibration.calibrate import calibrate
from ..config import MSE, QuantConfig
from ..core.frameworks import framework_of
from ..core.qparams import FLOAT32_TINY
from ..errors import UnsupportedSchemeError
from ..quantize import quantize
from ..tensor import QuantizedTensor
from .methods import HQQ
from .xp import namespace

__all__ = ["hqq_qparams", "hqq_quantize", "units_of", "unit_error"]


def units_of(w, config: QuantConfig):
    """(w as (units, elements) float32, the config's unit shape) of a 2-D weight."""
    rows, cols = (int(s) for s in w.shape)
    gran = config.granularity.value
    if gran == "group" and cols % config.group_size == 0:
        return w.reshape(rows * cols // config.group_size, config.group_size), \
            (rows, cols // config.group_size)
    if gran == "channel" and config.axis in (0, -2):
        return w.reshape(rows, cols), (rows,)
    if gran == "tensor":
        return w.reshape(1, rows * cols), ()
    raise UnsupportedSchemeError(
        f"{config.describe()} on a weight {tuple(w.shape)}: HQQ and GPTQ take whole groups "
        "(in_features a multiple of group_size), channels on axis 0, or one tensor")


def _codes(xp, w, scale, zero, config: QuantConfig):
    inv = xp.astype(1.0 / scale, "float32")
    return xp.clip(xp.rint(w * inv) + zero, config.qmin, config.qmax)


def unit_error(xp, w, scale, zero, config: QuantConfig):
    """Per unit (rows of ``w``) sum of squared error of the contract's quantize/dequantize."""
    q = _codes(xp, w, scale, zero, config)
    return xp.sum(xp.astype((q - zero) * scale - w, "float64") ** 2, axis=1, keepdims=True)


def _shrink(xp, x, beta: float, p: float):
    return xp.sign(x) * xp.clip(xp.abs(x) - (1.0 / beta) * (xp.abs(x) + 1e-8) ** (p - 1), 0, None)


def _refit(xp, q, target, zero, config: QuantConfig):
    """Least-squares (scale, zero point) of ``target`` ~ scale * (q - zero), per unit."""
    n = q.shape[1]
    if not config.symmetric:
        qm, tm = xp.sum(q, 1, True) / n, xp.sum(target, 1, True) / n
        dq = q - qm
        slope = xp.sum(dq * (target - tm), 1, True) / xp.sum(dq * dq, 1, True)
        intercept = tm - slope * qm
        zero = xp.clip(xp.rint(-intercept / slope), config.qmin, config.qmax)
    c = q - zero
    scale = xp.sum(c * target, 1, True) / xp.sum(c * c, 1, True)
    ok = xp.isfinite(scale) & (scale >= FLOAT32_TINY) & xp.isfinite(zero)
    return xp.astype(scale, "float32"), zero, ok


def hqq_qparams(w, config: QuantConfig, params: HQQ | None = None) -> tuple[Any, Any]:
    """(scale float32, zero_point int32) of the config's unit shape, in ``w``'s framework.
    A torch tensor on the CPU is solved in NumPy (faster there), on a GPU in torch."""
    params = params or HQQ()
    if framework_of(w) == "torch" and w.device.type == "cpu":
        import torch

        s, z = _solve(w.detach().float().numpy(), config, params)
        return torch.from_numpy(np.array(s, order="C")), torch.from_numpy(np.array(z, order="C"))
    return _solve(w, config, params)


def _solve(w, config: QuantConfig, params: HQQ):
    xp = namespace(w)
    units, unit_shape = units_of(xp.astype(w, "float32"), config)
    starts = [config]
    if params.mse_start and not isinstance(config.calibration, MSE):
        starts.append(config.replace(calibration=MSE()))
    best = None
    for start in starts:
        p = calibrate(w, start)
        scale = xp.astype(p.scale, "float32").reshape(-1, 1)
        zero = xp.astype(p.zero_point, "float32").reshape(-1, 1)
        best = _descend(xp, units, scale, zero, config, params, best)
    best_s, best_z = best[1], best[2]
    return best_s.reshape(unit_shape), xp.astype(best_z, "int32").reshape(unit_shape)


def _keep_better(xp, best, err, scale, zero):
    """(error, scale, zero) per unit: the better of ``best`` and the new step."""
    if best is None:
        return err, scale, zero
    better = err < best[0]
    return (xp.where(better, err, best[0]), xp.where(better, scale, best[1]),
            xp.where(better, zero, best[2]))


def _descend(xp, units, scale, zero, config: QuantConfig, params: HQQ, best):
    """HQQ's steps from (scale, zero); ``best`` updated with every step's qparams."""
    best = _keep_better(xp, best, unit_error(xp, units, scale, zero, config), scale, zero)
    beta, last = params.beta, float("inf")
    for _ in range(params.iters):
        q = _codes(xp, units, scale, zero, config)
        rebuilt = (q - zero) * scale
        mean_abs = float(xp.sum(xp.abs(units - rebuilt))) / (units.shape[0] * units.shape[1])
        if mean_abs >= last:  # hqq's early stop
            break
        last = mean_abs
        target = units - _shrink(xp, units - rebuilt, beta, params.p)
        new_s, new_z, ok = _refit(xp, q, target, zero, config)
        scale, zero = xp.where(ok, new_s, scale), xp.where(ok, new_z, zero)
        beta *= params.kappa
        best = _keep_better(xp, best, unit_error(xp, units, scale, zero, config), scale, zero)
    return best


def hqq_quantize(w, config: QuantConfig, params: HQQ | None = None) -> QuantizedTensor:
    """A QuantizedTensor of the 2-D weight ``w`` (NumPy or torch) with HQQ's qparams."""
    return quantize(w, config, qparams=hqq_qparams(w, config, params))
