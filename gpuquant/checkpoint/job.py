"""The jobs of several processes: who is in the team, the one rank loop, and the launcher.

A command that writes a checkpoint folder on many processes (``quantize --shard-size``,
``export``) runs :func:`write_on_ranks`: rank 0 checks the output and makes a staging folder
beside it; every rank writes its own shards there; once all agree that they succeeded, rank 0
writes what remains (the index, side files) and puts the folder in place
(gpuquant.checkpoint.output). When any rank fails, every rank raises and the staging folder
goes: nothing partial appears at the output.

Under torchrun (WORLD_SIZE > 1) the ranks are torchrun's; ``--workers N`` starts N local
processes through torch.distributed's elastic launcher (:func:`launch_or_join`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import numpy as np

from ..calibration.collective import _Collective, _torch_distributed
from ..core.environ import env_int
from ..errors import QuantizationError
from .files import SafetensorsFile
from .index import Checkpoint, write_index
from .output import (
    INDEX_NAME,
    check_output,
    make_staging,
    place_folder,
    staged_file,
    staging_path,
    sweep_stale,
)

__all__ = ["Team", "PeerFailed", "write_on_ranks", "write_checkpoint", "launch_local", "launch_or_join",
           "reporting_peer_failure", "EXIT_ENV"]

EXIT_ENV = "GPUQUANT_TEST_EXIT_RANK"  # tests: this rank dies after writing its shards


def write_on_ranks(team: Team, out: str, inputs: Iterable[str], force: bool, names: list[str],
                   write_mine: Callable[[str], Any], finish: Callable[[str], Any]) -> Any:
    """The one rank loop: plan (done by the caller, alike on every rank), join, write my
    shards (``write_mine(staging)``), agree, and rank 0 finishes (``finish(staging)``: the
    index and side files) and places the folder. Returns what ``finish`` returned on rank 0,
    None elsewhere. ``names``: the files of the output folder (checked before any work)."""
    inputs, new = list(inputs), []

    def stage():
        new.append(check_output(out, inputs, force, folder=True, names=names))
        return np.array(make_staging(out), np.int64)

    made = team.together(lambda: stage() if team.rank == 0 else np.zeros(3, np.int64))
    staging = staging_path(out, tuple(int(v) for v in team.reduce(made, "MAX")))
    try:
        team.together(_write_mine, write_mine, staging, team.rank)
        return team.together(lambda: _finish(out, staging, finish, new) if team.rank == 0
                             else None)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_checkpoint(out: str, checkpoint: Checkpoint, force: bool,
                     write_shard: Callable[[str, SafetensorsFile, str], dict[str, str]]) -> None:
    """Write one output shard per input shard on this process alone, through
    ``write_shard(name, input, path) -> {key: shard name}``: one file through a temporary file,
    or a folder through :func:`write_on_ranks` with the index last."""
    if not checkpoint.sharded:
        with staged_file(out, checkpoint.inputs, force) as tmp:
            for _, f in checkpoint.files():
                write_shard(os.path.basename(out), f, tmp)
        return
    names = [os.path.basename(s) for s in checkpoint.shards]
    weight_map: dict[str, str] = {}

    def write_all(staging: str) -> None:
        for name, f in checkpoint.files():
            weight_map.update(write_shard(name, f, os.path.join(staging, name)))

    write_on_ranks(Team(), out, checkpoint.inputs, force, names + [INDEX_NAME], write_all,
                   lambda staging: write_index(staging, names, checkpoint.index_metadata,
                                               weight_map))


def _write_mine(write_mine: Callable[[str], Any], staging: str, rank: int) -> None:
    write_mine(staging)
    if os.environ.get(EXIT_ENV) == str(rank):  # tests: a rank dies before the others agree
        os._exit(1)


def _finish(out: str, staging: str, finish: Callable[[str], Any], new: list[bool]) -> Any:
    result = finish(staging)
    place_folder(out, staging, new[0])
    return result


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
        if env_int("WORLD_SIZE", 1) <= 1:
            return team
        torch, dist = _torch_distributed()
        team.local_rank = env_int("LOCAL_RANK", 0, 0)
        if cuda:  # NCCL reduces on each rank's own GPU
            torch.cuda.set_device(team.local_rank)
        if not dist.is_initialized():
            try:
                dist.init_process_group("nccl" if cuda else "gloo",
                                        timeout=timedelta(seconds=timeout_s))
            except dist.DistNetworkError as exc:  # a port in use, an address not reached
                raise QuantizationError(f"MASTER_PORT: {str(exc).splitlines()[0][-150:]}") from None
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
    """Run ``python -m gpuquant *argv`` on ``workers`` local processes (torchrun --standalone's
    launcher, its logs not kept); raises ChildFailedError when a worker fails (the others stop)."""
    _torch_distributed(f"--workers {workers}")
    from torch.distributed.launcher.api import DefaultLogsSpecs, LaunchConfig, elastic_launch

    os.environ.update(env or {})  # the workers inherit this process's environment
    with tempfile.TemporaryDirectory(prefix="gpuquant-launch-") as logs:  # not torchelastic_*
        config = LaunchConfig(1, 1, workers, run_id=str(uuid.uuid4()), rdzv_backend="c10d",
                              rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.1,
                              local_addr="127.0.0.1", logs_specs=DefaultLogsSpecs(log_dir=logs))
        elastic_launch(config, sys.executable)("-m", "gpuquant", *argv)


def _gpus() -> int:
    import torch

    return torch.cuda.device_count()


def _launch(args, argv: list[str]) -> None:
    """--workers N: the same command on N local processes; cleans up after a failed worker."""
    _torch_distributed(f"--workers {args.workers}")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if args.device == "cuda" and args.workers > _gpus():
        raise QuantizationError(f"--workers {args.workers}: only {_gpus()} GPU(s) visible with "
                                "--device cuda")
    try:
        launch_local(args.workers, argv)
    except BaseException as exc:  # a failed worker, or Ctrl-C / SIGTERM (workers stopped)
        sweep_stale(os.path.dirname(os.path.abspath(args.output)))  # their staging folders
        if not isinstance(exc, ChildFailedError):
            raise
        codes = [f.exitcode for f in exc.failures.values()]
        raise PeerFailed(f"{len(codes)} of {args.workers} worker(s) failed (exit codes "
                         f"{codes}); nothing was written to {args.output}") from None


def launch_or_join(args, argv: list[str]):
    """--workers N without torchrun: starts them here and returns None; else this rank's
    (to_device, Team): under torchrun or --workers, the GPU of its local rank when every
    process of this machine has one, the CPU otherwise."""
    world = env_int("WORLD_SIZE", 1)
    if world == 1 and args.workers > 1:
        _launch(args, argv)
        return None
    if args.workers not in (1, world):
        raise QuantizationError(f"--workers {args.workers} under torchrun with {world} "
                                "processes; leave --workers out there")
    from ..core.devices import converter_for

    to_device, local = converter_for(args.device), env_int("LOCAL_WORLD_SIZE", world)
    if world > 1 and to_device is not None and _gpus() < local:
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
