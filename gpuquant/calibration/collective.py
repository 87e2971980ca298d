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

:class:`Team` and :func:`launch_or_join` are what the sharded ``quantize`` and
``export`` commands share: the job's ranks, their agreement on success, and
``--workers N`` through torch.distributed's elastic launcher.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import shutil
import sys
import uuid
from datetime import timedelta
from typing import Any

import numpy as np

from ..backends import BACKENDS
from ..checkpoint.shards import staging_path
from ..errors import BackendUnavailableError, InvalidShapeError, QuantizationError
from .averages import mean_of_sums, weighted_sums
from .histograms import HistogramState

__all__ = ["all_reduce_calibrator", "Team", "PeerFailed", "launch_local", "launch_or_join",
           "reporting_peer_failure"]
TOKEN_ENV = "GPUQUANT_STAGING_TOKEN"  # set by --workers, so the launcher can clean up
EXIT_ENV = "GPUQUANT_TEST_EXIT_RANK"  # tests: this rank dies after writing its first shard

_NO_VALUE = -(1 << 62)  # what a rank without a value gives to a MAX agreement


def _torch_distributed():
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        raise BackendUnavailableError(
            "Calibrator.all_reduce needs PyTorch's torch.distributed: pip install torch "
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


class PeerFailed(RuntimeError):
    """Another rank of the job failed (its own error is on its stderr)."""


class Team:
    """The processes of one job: this one's rank, the world size, and agreement on success.

    ``Team()`` is one process alone; :meth:`from_env` joins the job torchrun (or
    :func:`launch_local`) describes in RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR.
    Collectives time out after ``timeout_s``, so a rank that dies never leaves the
    others waiting for ever.
    """

    def __init__(self):
        self.rank, self.world, self.local_rank, self._reduce = 0, 1, 0, None
        self._store, self._counted = None, 0

    @classmethod
    def from_env(cls, cuda: bool, timeout_s: float = 60.0) -> Team:
        team = cls()
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return team
        torch, dist = _torch_distributed()
        team.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cuda:  # NCCL reduces on each rank's own GPU
            torch.cuda.set_device(team.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo",
                                    timeout=timedelta(seconds=timeout_s))
        team.rank, team.world = dist.get_rank(), dist.get_world_size()
        team._reduce = _Collective(None)
        try:  # the job's key-value store; without it each rank counts only its own share
            team._store = dist.distributed_c10d._get_default_store()
        except (AttributeError, RuntimeError, ValueError):
            team._store = None
        return team

    @property
    def counts_job(self) -> bool:
        """Whether :meth:`count` sums over every rank (else over this one only)."""
        return self._store is not None or self.world == 1

    def count(self, n: int) -> int:
        """Add ``n`` to the job's counter; returns the total so far."""
        self._counted += n
        if self._store is None:
            return self._counted
        try:
            return int(self._store.add("gpuquant.count", int(n)))
        except RuntimeError as exc:  # the store went with a dead rank (or its agent)
            raise PeerFailed(f"lost another rank ({str(exc).splitlines()[0][:160]})") from None

    def reduce(self, values: Any, op: str) -> np.ndarray:
        """An all_reduce (``op``: "SUM", "MAX", "MIN") of a small array; itself when alone."""
        values = np.asarray(values)
        if self._reduce is None:
            return values.copy()
        try:
            return self._reduce(values, op)
        except RuntimeError as exc:  # gloo/NCCL: a rank died or the timeout passed
            raise PeerFailed(f"lost another rank ({str(exc).splitlines()[0][:160]})") from None

    def together(self, fn, *args):
        """Run ``fn`` here, then agree: if it failed on any rank, every rank raises (its own
        error where it failed, :class:`PeerFailed` elsewhere)."""
        try:
            result = fn(*args)
        except BaseException:
            try:  # tell the others; a dead or broken group must not hide this error
                self.reduce(np.array([1], np.int64), "MAX")
            except Exception:  # noqa: BLE001, S110 - the error being raised matters more
                pass
            raise
        if self.reduce(np.array([0], np.int64), "MAX")[0]:
            raise PeerFailed("another rank failed; its error is printed above")
        return result

    def close(self) -> None:
        if self._reduce is not None:
            self._reduce.dist.destroy_process_group()
            self._reduce = None


def launch_local(workers: int, argv: list[str], env: dict[str, str] | None = None) -> None:
    """Run ``python -m gpuquant *argv`` on ``workers`` processes of this machine through
    torch.distributed's elastic launcher (torchrun --standalone); raises
    ChildFailedError when a worker fails (the launcher stops the others)."""
    _torch_distributed()
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.update(env or {})  # the workers inherit this process's environment
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers,
                          run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1,
                          local_addr="127.0.0.1")
    elastic_launch(config, sys.executable)("-m", "gpuquant", *argv)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _launch(args, argv: list[str]) -> None:
    """--workers N: the same command on N local processes; cleans up after a failed worker."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if args.device == "cuda" and args.workers > _gpus():
        raise QuantizationError(f"--workers {args.workers}: only {_gpus()} GPU(s) visible with "
                                "--device cuda")
    token = secrets.randbits(48)
    try:
        launch_local(args.workers, argv, {TOKEN_ENV: f"{token:012x}"})
    except BaseException as exc:  # a failed worker, or Ctrl-C / SIGTERM (workers stopped)
        shutil.rmtree(staging_path(args.output, token), ignore_errors=True)
        if not isinstance(exc, ChildFailedError):
            raise
        codes = [f.exitcode for f in exc.failures.values()]
        raise PeerFailed(f"{len(codes)} of {args.workers} worker(s) failed (exit codes "
                         f"{codes}); nothing was written to {args.output}") from None


def launch_or_join(args, argv: list[str]):
    """--workers N without torchrun: starts them here and returns None; else this rank's
    (to_device, Team): under torchrun or --workers, the GPU of its local rank when every
    process of this machine has one, the CPU otherwise."""
    world = int(os.environ.get("WORLD_SIZE") or 1)
    if world == 1 and args.workers > 1:
        _launch(args, argv)
        return None
    if args.workers not in (1, world):
        raise QuantizationError(f"--workers {args.workers} under torchrun with {world} "
                                "processes; leave --workers out there")
    from ..core.devices import converter_for

    to_device, local = converter_for(args.device), os.environ.get("LOCAL_WORLD_SIZE") or world
    if world > 1 and to_device is not None and _gpus() < int(local):
        if args.device == "cuda":  # one GPU per process, decided alike on every rank
            raise QuantizationError(f"--device cuda: {_gpus()} GPU(s) for {local} processes "
                                    "on this machine; run at most one per GPU")
        to_device = None  # auto: more processes than GPUs, so every rank works on the CPU
    return to_device, Team.from_env(cuda=world > 1 and to_device is not None)


@contextlib.contextmanager
def reporting_peer_failure():
    """A failure on another rank (or worker), not a bug here: one line, exit 1."""
    try:
        yield
    except PeerFailed as exc:
        print(f"gpuquant: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
