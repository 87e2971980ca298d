"""GPTQ's solve for one Linear weight, given its Hessian H = 2 X^T X.

As the GPTQ reference (Frantar et al. 2022, gptq.py): dead inputs (diag H = 0)
get H_ii = 1 and a zero weight column; H += damp * mean(diag H) * I; U is the
upper Cholesky factor of H^-1; columns are quantized one by one in blocks of
``block_size``, each column's error (w - q) / U_jj spread over the later columns
of its block at once and over the remaining columns once per block. With
``act_order`` the columns go in descending diag(H) and the groups are static
(their qparams from the original weights). Without it, each group's scale and
zero point are set when the solve reaches the group's first column, from the
partly updated weights, by the config's calibration (min/max, MSE search, ...),
as the GPTQ paper does; per-channel and per-tensor qparams are set once, from
the original weights. Blocks start at group starts (a block is a multiple or a
divisor of the group), so a group's weights are fully updated when it is reached.

Columns are quantized by the contract (float32 ``rint(w * (1 / scale)) + zero``,
clamped): with H = I no error moves, and the codes equal round-to-nearest's bit
for bit. The solve runs in float64 in NumPy (the reference) or in float32 in torch
on the weight's device; between the two, codes may differ where a value sits
within rounding of a decision boundary, and the difference then propagates:
tests allow 2% of the codes to differ and bound the layer output error ratio.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..calibration.calibrate import calibrate
from ..config import QuantConfig
from ..core.frameworks import framework_of, host_copy
from ..errors import InvalidCalibrationError, InvalidShapeError
from ..quantize import quantize
from ..tensor import QuantizedTensor
from .hqq import units_of
from .methods import GPTQ
from .xp import NumpyNS, namespace

__all__ = ["gptq_quantize", "FLOAT_CODE_FRACTION"]

FLOAT_CODE_FRACTION = 0.02  # codes allowed to differ between the float32 and float64 solves


def _working(w, hessian, precision: str):
    """(xp, W, H) in the solve's framework and precision."""
    if precision == "float64":
        if framework_of(w) == "torch":
            w = w.detach().float()  # NumPy has no bfloat16
        return NumpyNS, host_copy(w).astype(np.float64), host_copy(hessian).astype(np.float64)
    import torch

    wt = w if framework_of(w) == "torch" else torch.from_numpy(np.asarray(w))
    ht = hessian if framework_of(hessian) == "torch" else torch.from_numpy(np.asarray(hessian))
    xp = namespace(wt)
    return xp, wt.detach().to(torch.float32).clone(), ht.detach().to(wt.device, torch.float32)


def _qparams(xp, block, config: QuantConfig):
    """(scale, zero) as float32 (rows, units) columns of ``block`` (rows, cols), by calibrate."""
    b32 = xp.astype(block, "float32")
    if xp is not NumpyNS:
        b32 = b32.contiguous()
    else:
        b32 = np.ascontiguousarray(b32)
    p = calibrate(b32, config)
    scale = xp.astype(p.scale, "float32").reshape(block.shape[0], -1)
    zero = xp.astype(p.zero_point, "float32").reshape(block.shape[0], -1)
    return scale, zero


def _quantize_column(xp, w, scale, zero, config: QuantConfig):
    """The contract's quantize/dequantize of one column, in float32; back in w's dtype."""
    inv = xp.astype(1.0 / scale, "float32")
    q = xp.clip(xp.rint(xp.astype(w, "float32") * inv) + zero, config.qmin, config.qmax)
    return xp.astype((q - zero) * scale, str(w.dtype).replace("torch.", ""))


class _Solve:
    """The state of one solve: W, U, the permutation and each column's (scale, zero)."""

    def __init__(self, xp, W, H, config: QuantConfig, params: GPTQ):
        self.xp, self.config, self.params = xp, config, params
        rows, cols = W.shape
        dead = _diagonal(xp, H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        self.group = config.group_size if config.granularity.value == "group" else None
        self.perm = _descending(xp, _diagonal(xp, H)) if params.act_order else None
        self.static = None
        if self.group is None or self.perm is not None:
            # per channel, per tensor, or act-order's static groups: from the weights as they are
            units, _ = units_of(W, config)
            s, z = _qparams(xp, units, _unit_config(config))
            shape = (1, 1) if config.granularity.value == "tensor" else (rows, -1)
            self.static = (s.reshape(shape), z.reshape(shape))
        if self.perm is not None:
            W, H = W[:, self.perm], H[self.perm][:, self.perm]
        damp = params.damp * float(xp.sum(_diagonal(xp, H))) / cols
        if xp is NumpyNS:
            H[np.diag_indices(cols)] += damp
        else:
            H.diagonal().add_(damp)
        self.W, self.U = W, xp.upper_cholesky_of_inverse(H)
        self.group_params: dict[int, tuple] = {}

    def column_params(self, j: int, W1, i: int, i2: int):
        """(scale, zero) columns (rows, 1) for column j (solve order) at block offset i."""
        xp = self.xp
        if self.group is None:
            return self.static
        if self.perm is not None:
            g = int(self.perm[j]) // self.group
            s, z = self.static
            return s[:, g:g + 1], z[:, g:g + 1]
        g = j // self.group
        if g not in self.group_params:
            width = min(self.group, self.W.shape[1] - j)
            block = W1[:, i:i + width] if i + width <= W1.shape[1] else \
                _concat(xp, [W1[:, i:], self.W[:, i2:j + width]])
            self.group_params[g] = _qparams(xp, block, self.config.replace(group_size=width))
        return self.group_params[g]


def _unit_config(config: QuantConfig) -> QuantConfig:
    """The config that calibrates a (units, elements) view: one unit per row, or a tensor."""
    if config.granularity.value == "tensor":
        return config
    return config.replace(granularity="channel", group_size=None, axis=0)


def _descending(xp, diag):
    if xp is NumpyNS:
        return np.argsort(-diag, kind="stable")
    return xp.torch.argsort(diag, descending=True, stable=True)


def _concat(xp, parts):
    if xp is NumpyNS:
        return np.concatenate(parts, axis=1)
    return xp.torch.cat(parts, dim=1)


def _diagonal(xp, h):
    return np.diagonal(h).copy() if xp is NumpyNS else h.diagonal().clone()


def _block_size(params: GPTQ, group: int | None) -> int:
    b = params.block_size
    if group is None or b % group == 0 or group % b == 0:
        return b
    return group


def _run(solve: _Solve):
    xp, W, U = solve.xp, solve.W, solve.U
    rows, cols = W.shape
    Q = xp.zeros_like(W)
    step = _block_size(solve.params, solve.group)
    for i1 in range(0, cols, step):
        i2 = min(i1 + step, cols)
        W1, U1 = xp.copy(W[:, i1:i2]), U[i1:i2, i1:i2]
        err = xp.zeros_like(W1)
        for i in range(i2 - i1):
            s, z = solve.column_params(i1 + i, W1, i, i2)
            w = W1[:, i]
            q = _quantize_column(xp, w.reshape(rows, 1), s, z, solve.config).reshape(rows)
            Q[:, i1 + i] = q
            e = (w - q) / U1[i, i]
            W1[:, i:] -= e.reshape(rows, 1) * U1[i, i:].reshape(1, -1)
            err[:, i] = e
        W[:, i2:] -= err @ U[i1:i2, i2:]
    return Q


def gptq_quantize(w: Any, hessian: Any, config: QuantConfig,
                  params: GPTQ | None = None) -> QuantizedTensor:
    """GPTQ of the 2-D weight ``w`` (NumPy or torch, (out, in)) against ``hessian``
    ((in, in), 2 X^T X of the layer's inputs). A QuantizedTensor in ``w``'s framework."""
    params = params or GPTQ()
    rows, cols = (int(s) for s in w.shape)
    if tuple(int(s) for s in hessian.shape) != (cols, cols):
        raise InvalidShapeError(f"hessian has shape {tuple(hessian.shape)}; a weight "
                                f"{(rows, cols)} needs ({cols}, {cols})")
    units_of(w, config)  # refuses partial groups and other axes
    precision = params.precision or ("float64" if _on_cpu(w) else "float32")
    xp, W, H = _working(w, hessian, precision)
    try:
        solve = _Solve(xp, W, H, config, params)
    except (np.linalg.LinAlgError, RuntimeError) as exc:  # torch raises _LinAlgError(RuntimeError)
        if "linalg" not in type(exc).__module__ + type(exc).__name__.lower() and \
                "positive-definite" not in str(exc):
            raise
        raise InvalidCalibrationError(
            f"the Hessian of a {rows}x{cols} weight is not positive definite after damping "
            f"{params.damp}; give more calibration data or a larger GPTQ(damp=...)") from None
    Q = _run(solve)
    if solve.perm is not None:
        Q = Q[:, _inverse(xp, solve.perm)]
    scale, zero = _final_qparams(solve, rows, cols)
    values = xp.astype(Q, "float32")
    return _as_tensor(w, values, scale, zero, config)


def _on_cpu(w) -> bool:
    return framework_of(w) == "numpy" or w.device.type == "cpu"


def _inverse(xp, perm):
    if xp is NumpyNS:
        return np.argsort(perm, kind="stable")
    return xp.torch.argsort(perm)


def _final_qparams(solve: _Solve, rows: int, cols: int):
    xp, cfg = solve.xp, solve.config
    if solve.group is not None and solve.perm is None:
        groups = [solve.group_params[g] for g in sorted(solve.group_params)]
        return _concat(xp, [g[0] for g in groups]), _concat(xp, [g[1] for g in groups])
    s, z = solve.static
    if cfg.granularity.value == "tensor":
        return s.reshape(()), z.reshape(())
    return (s, z) if cfg.granularity.value == "group" else (s.reshape(rows), z.reshape(rows))


def _as_tensor(w, values, scale, zero, config: QuantConfig) -> QuantizedTensor:
    """Quantize the solved grid values with their qparams: exactly the solve's codes."""
    xp = namespace(values)
    zp = xp.astype(zero, "int32")
    if framework_of(w) == "torch" and framework_of(values) == "numpy":
        import torch

        values, scale, zp = (torch.from_numpy(np.array(a, order="C")).to(w.device)
                             for a in (values, scale, zp))
    elif framework_of(w) == "numpy" and framework_of(values) == "torch":
        values, scale, zp = (a.cpu().numpy() for a in (values, scale, zp))
    qt = quantize(values, config, qparams=(scale, zp))
    dtype = str(w.dtype).replace("torch.", "")
    if dtype != qt.dtype:
        qt = QuantizedTensor(qt.data, qt.scale, qt.zero_point, qt.shape, dtype, config)
    return qt
