"""Calibrator states merged across a ``torch.distributed`` process group.

:func:`all_reduce_calibrator` (what ``Calibrator.all_reduce`` calls) is a
collective: every rank of the group calls it, and afterwards every rank holds
the same state, the one a single process would hold after all the ranks'
batches. It reduces what :meth:`Calibrator.merge` combines, N ranks at once:

1. the ranks agree on the config, momentum, histogram bins, backend and qparams
   shape (a MAX reduction of a small int64 header; a rank that saw no batch
   learns the last two here). A disagreement raises on every rank alike;
2. exact min/max: a MIN reduction of (lo, -hi) per unit, a SUM of batch counts;
3. growing histograms: a MAX reduction of the per-unit radii (powers of two);
   each rank re-bins its counts to those radii with HistogramState's own
   doubling, then a SUM of the int64 counts and the MIN of (lo, -hi);
4. a moving average (``momentum``) has no batch order across ranks: the result
   is the batch-weighted mean of the ranks' averages,
   ``lo = sum(n_r * lo_r) / sum(n_r)`` in float64, rounded once to float32
   (gpuquant.calibration.averages: the one rule ``merge`` uses too, so two states give
   the same bits merged or all-reduced).

Ranks that saw no batch contribute nothing. Unlike ``all_gather_object`` nothing
is pickled. The reduced arrays live on the CPU for gloo and MPI, and on the
rank's current CUDA device for NCCL (NCCL reduces device memory only); the
state itself stays in NumPy. torch is imported when the function is called.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import numpy as np

from ..backends import BACKENDS
from ..errors import BackendUnavailableError, InvalidShapeError, QuantizationError
from .averages import mean_of_sums, weighted_sums
from .histograms import HistogramState

__all__ = ["all_reduce_calibrator"]

_NO_VALUE = -(1 << 62)  # what a rank without a value gives to a MAX agreement


def _torch_distributed(what: str = "Calibrator.all_reduce"):
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise BackendUnavailableError(
            f"{what} needs PyTorch's torch.distributed: pip install torch "
            "(or pip install 'gpuquant[torch]')"
        ) from None
    if not dist.is_available():
        raise BackendUnavailableError(
            "this PyTorch build has no torch.distributed; install one that has: pip install torch"
        )
    return torch, dist


class _Collective:
    """``all_reduce`` of small NumPy arrays over one process group, on the device its
    backend reduces on."""

    def __init__(self, group: Any):
        torch, dist = _torch_distributed()
        if group is None and not dist.is_initialized():
            raise BackendUnavailableError(
                "Calibrator.all_reduce(group=None) needs an initialised default process group: "
                "call torch.distributed.init_process_group() first (under torchrun it reads "
                "the rank and world size from the environment), or pass group="
            )
        if dist.get_rank(group) < 0:
            raise QuantizationError(
                "Calibrator.all_reduce: this process is not a member of group=; call it on the "
                "group's ranks only"
            )
        self.torch, self.dist, self.group = torch, dist, group
        self.device = _reduce_device(torch, dist.get_backend(group))

    def __call__(self, values: np.ndarray, op: str) -> np.ndarray:
        # a copy: the reduction is in place and must not write into the caller's array
        tensor = self.torch.from_numpy(np.array(values, copy=True)).to(self.device)
        self.dist.all_reduce(tensor, op=getattr(self.dist.ReduceOp, op), group=self.group)
        return tensor.cpu().numpy()


def _reduce_device(torch, backend: Any):
    """CPU for gloo and MPI (also "cpu:gloo,cuda:nccl"); the current CUDA device for NCCL."""
    name = str(backend).lower()
    if "nccl" in name and "gloo" not in name and "mpi" not in name:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree(reduce: _Collective, values: list[int | None]) -> tuple[list[int | None], list[bool]]:
    """Per entry: the value the ranks gave (None where none gave one), and whether every
    rank that gave one gave the same. One MAX reduction of (v, -v); |v| < 2^62."""
    mine = [_NO_VALUE if v is None else v for v in values]
    mine += [_NO_VALUE if v is None else -v for v in values]
    both = reduce(np.array(mine, np.int64), "MAX")
    n = len(values)
    agreed = [None if hi == _NO_VALUE else int(hi) for hi in both[:n]]
    same = [hi == _NO_VALUE or hi == -neg for hi, neg in zip(both[:n], both[n:])]
    return agreed, same


def _settings_digest(state: dict[str, Any]) -> int:
    """A 62-bit digest of what every rank's Calibrator must share."""
    hist = state["histogram"]
    key = json.dumps([state["config"], state["momentum"], None if hist is None else hist["bins"]],
                     sort_keys=True)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 2


def _agree_on_layout(reduce: _Collective,
                     state: dict[str, Any]) -> tuple[tuple[int, ...], str | None] | None:
    """The qparams shape and backend of the ranks with data (None when no rank has any)."""
    has = state["batches"] > 0
    shape = tuple(state["unit_shape"]) if has else None
    backend = state["backend"] if has else None
    code = None if backend is None else (BACKENDS.index(backend) if backend in BACKENDS else len(BACKENDS))
    (_, ndim, code), same = _agree(reduce, [_settings_digest(state),
                                            None if shape is None else len(shape), code])
    if not same[0]:
        raise QuantizationError(
            "Calibrator.all_reduce: the ranks' calibrators differ in config, momentum or histogram "
            f"bins; build every rank's Calibrator alike (this rank: {state['config']}, "
            f"momentum={state['momentum']})"
        )
    if not same[2] or code == len(BACKENDS):
        raise QuantizationError(
            f"Calibrator.all_reduce: the ranks calibrated on different or unknown backends (this "
            f"rank: {backend!r}); accepted: one of {BACKENDS} on every rank"
        )
    if ndim is None:
        return None
    same_shape = same[1]
    dims: list[int | None] = []
    if same_shape and ndim:
        dims, same_dims = _agree(reduce, list(shape) if shape is not None else [None] * ndim)
        same_shape = all(same_dims)
    if not same_shape:
        raise InvalidShapeError(
            f"Calibrator.all_reduce: the ranks' batches give qparams of different shapes (this "
            f"rank: {shape}); every rank must calibrate the same tensor layout"
        )
    return tuple(dims), None if code is None else BACKENDS[code]


def _reduce_ends(reduce: _Collective, lo: Any, hi: Any, units: int) -> tuple[np.ndarray, np.ndarray]:
    """The MIN of lo and the MAX of hi per unit, in one MIN reduction of (lo, -hi);
    a rank without data gives (+inf, -inf)."""
    if lo is None:
        lo, hi = np.full(units, np.inf, np.float32), np.full(units, -np.inf, np.float32)
    ends = np.concatenate([np.asarray(lo, np.float32).reshape(-1),
                           -np.asarray(hi, np.float32).reshape(-1)])
    ends = reduce(ends, "MIN")
    return ends[:units], -ends[units:]


def _reduce_minmax(reduce: _Collective, state: dict[str, Any], shape: tuple[int, ...]) -> dict:
    units = math.prod(shape)
    has = state["batches"] > 0
    lo, hi = _reduce_ends(reduce, state["lo"] if has else None, state["hi"] if has else None, units)
    batches = reduce(np.array([state["batches"]], np.int64), "SUM")
    return {"batches": int(batches[0]), "lo": lo.reshape(shape).tolist(),
            "hi": hi.reshape(shape).tolist()}


def _reduce_moving_average(reduce: _Collective, state: dict[str, Any],
                           shape: tuple[int, ...]) -> dict:
    """The batch-weighted mean of the ranks' moving averages (gpuquant.calibration.averages)."""
    sums = weighted_sums(state["lo"], state["hi"], state["batches"], math.prod(shape))
    lo, hi, total = mean_of_sums(reduce(sums, "SUM"))
    return {"batches": total, "lo": lo.reshape(shape).tolist(), "hi": hi.reshape(shape).tolist()}


def _reduce_histograms(reduce: _Collective, state: dict[str, Any], shape: tuple[int, ...]) -> dict:
    """Agree on the widest radii, re-bin to them (HistogramState's doubling), sum counts."""
    units = math.prod(shape)
    hist = HistogramState.from_state(state["histogram"])  # a copy: the state changes at the end
    has = hist.counts is not None
    radius = reduce(hist.radius if has else np.zeros(units, np.float64), "MAX")
    hist.grow_to(radius)  # powers of two: grows to exactly these radii (zeros when empty)
    summed = reduce(np.append(hist.counts.reshape(-1), np.int64(state["batches"])), "SUM")
    lo, hi = _reduce_ends(reduce, hist.lo, hist.hi, units)
    merged = dict(hist.state(), counts=summed[:-1].reshape(units, hist.bins), lo=lo, hi=hi)
    return {"batches": int(summed[-1]), "histogram": merged}


def all_reduce_calibrator(calibrator: Any, group: Any = None) -> Any:
    """Merge ``calibrator``'s state with those of every rank in ``group`` (the default
    process group when None), in place; returns the calibrator.

    A collective: every rank of the group must call it. Afterwards every rank holds the
    same state; for min/max and histograms it equals one process that saw every
    rank's batches (see the module docstring for the moving average).

    Raises:
        BackendUnavailableError: torch (or torch.distributed) is missing, or group is
            None and no default process group is initialised.
        QuantizationError: the ranks' calibrators differ in config, momentum, bins or
            backend (raised on every rank).
        InvalidShapeError: the ranks' batches give qparams of different shapes.
    """
    reduce = _Collective(group)
    state = calibrator.state_dict()
    layout = _agree_on_layout(reduce, state)
    if layout is None:  # no rank has seen a batch: nothing to merge
        return calibrator
    shape, backend = layout
    if state["histogram"] is not None:
        merged = _reduce_histograms(reduce, state, shape)
    elif state["momentum"] is None:
        merged = _reduce_minmax(reduce, state, shape)
    else:
        merged = _reduce_moving_average(reduce, state, shape)
    state.update(merged, backend=backend, unit_shape=list(shape))
    return calibrator.load_state_dict(state)
