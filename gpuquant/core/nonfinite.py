"""NaN/Inf in calibration data: found by the kernels, reported without stalling the device.

On the CPU the NumPy backend raises ``NonFiniteError`` at once. On a GPU the
min/max kernels note non-finite values, in the same pass that reduces the
data, on a small int32 board in host-mapped pinned memory (the kernels write
it through its unified address; no copy, event or sync):

- ``flags[0]`` counts every non-finite value seen; the host polls only this;
- each call site (a launch plan's ``slot``) has a count and its first unit
  (channel, group or row), written with atomic min.

Every gpuquant entry point polls the board first (:func:`entry`), a plain read
of host memory, and raises for what *earlier* calls found, naming the
tensor's shape and the first unit: a NaN found by a GPU call is raised by the
next gpuquant call. ``QuantizedTensor.check_finite()`` waits for the device
and then polls. Nothing is raised while a CUDA graph is being captured;
replays write to the same board, so they report too. ``gq.calibrate`` waits
for its kernels anyway and raises at once.

Inside ``torch.compile`` the entry poll is not traced (:func:`compiling`):
the graph holds only the gpuquant operators (gpuquant.torch_ops), whose
implementations poll the board when they run, as the next eager call does.
A replayed CUDA graph runs no Python: the next gpuquant call after the
replay, or ``qt.check_finite()``, reports what it found.
"""

from __future__ import annotations

import functools
import itertools
import sys
import threading

import numpy as np

from ..errors import NonFiniteError
from .blocks import run_blocks
from .frameworks import framework_of

__all__ = ["entry", "compiling", "raise_ready", "wait_all", "board_for", "new_slot",
           "nonfinite_message", "nonfinite_error", "raise_counts"]

SLOTS = 4096  # call sites with their own count and first unit; reused round robin
_INT32_MAX = np.iinfo(np.int32).max
_boards: list[Board] = []
_by_framework: dict[str, Board] = {}
_sites: dict[int, tuple[tuple[int, ...], bool]] = {}  # slot -> (shape, one unit only)
_slots = itertools.count()
_lock = threading.Lock()


def nonfinite_message(total: int, first_unit: int | None, shape, name: str = "x") -> str:
    where = f"; the first is in unit {first_unit} (flat index into the qparams)" \
        if first_unit is not None else ""
    return (f"{name} of shape {tuple(shape)} has {total} non-finite value(s) (NaN or Inf) in its "
            f"calibration data{where}. Clean the data, or pass ignore_nonfinite=True to "
            "calibrate over the finite values only")


class Board:
    """The flags of one array framework: ``tensor`` goes to the kernels, ``host`` is read."""

    def __init__(self, framework: str, tensor, host: np.ndarray, capturing):
        self.framework, self.tensor, self.host, self.capturing = framework, tensor, host, capturing
        self.host[:] = 0
        self.host[2::2] = _INT32_MAX

    def take(self) -> NonFiniteError | None:
        """The error for the first call site that found NaN/Inf, clearing the board."""
        if self.capturing():
            return None
        with _lock:
            counts = self.host[1::2].copy()
            firsts = self.host[2::2].copy()
            self.host[:] = 0
            self.host[2::2] = _INT32_MAX
        hit = np.flatnonzero(counts)
        if not hit.size:
            return None
        slot = int(hit[0])
        shape, single = _sites.get(slot, ((), True))
        first = None if single else int(firsts[slot])
        return NonFiniteError(nonfinite_message(int(counts[slot]), first, shape))


def board_for(x) -> Board:
    """The board of the framework of array ``x`` (created at the first GPU call)."""
    framework = framework_of(x)
    board = _by_framework.get(framework)
    if board is None:
        with _lock:
            board = _by_framework.get(framework) or _make_board(framework, x)
    return board


def _make_board(framework: str, x) -> Board:
    n = 1 + 2 * SLOTS
    if framework == "cupy":
        import cupy
        import cupyx

        host = cupyx.empty_pinned((n,), dtype=np.int32)  # mapped: UVA makes it device-visible

        def capturing():
            stream = cupy.cuda.get_current_stream()
            return bool(getattr(stream, "is_capturing", lambda: False)())

        board = Board(framework, _HostPointer(host), host, capturing)
    else:
        import torch

        pinned = x.device.type == "cuda"  # CPU tensors: the interpreter
        tensor = torch.zeros(n, dtype=torch.int32, pin_memory=pinned)
        capturing = torch.cuda.is_current_stream_capturing if pinned else (lambda: False)
        board = Board(framework, tensor, tensor.numpy(), capturing)
    _by_framework[framework] = board
    _boards.append(board)
    return board


class _HostPointer:
    """A pinned NumPy array as a Triton pointer argument (its unified address)."""

    __slots__ = ("array", "dtype")

    def __init__(self, array: np.ndarray):
        self.array, self.dtype = array, array.dtype

    def data_ptr(self) -> int:
        return int(self.array.ctypes.data)


def new_slot(shape: tuple[int, ...], num_units: int) -> int:
    """A call site's slot on the boards, remembering what to name in its report."""
    slot = next(_slots) % SLOTS
    _sites[slot] = (tuple(shape), num_units == 1)
    return slot


def raise_ready() -> None:
    """Raise what earlier GPU calls found (never waits; a read of host memory)."""
    for board in _boards:
        if board.host[0]:
            error = board.take()
            if error is not None:
                raise error


def wait_all() -> None:
    """Wait for every device with a board, then raise what was found."""
    for board in _boards:
        if board.framework == "cupy":
            import cupy

            cupy.cuda.Device().synchronize()
        elif board.tensor.is_pinned():
            import torch

            torch.cuda.synchronize()
    raise_ready()


def compiling() -> bool:
    """True while torch.compile (dynamo) traces the caller; False without torch."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def entry(fn):
    """Decorate a public entry point: raise pending non-finite reports before any work
    (not while torch.compile traces it: a graph reads no host memory)."""

    @functools.wraps(fn)
    def checked(*args, **kwargs):
        if not compiling():
            for board in _boards:
                if board.host[0]:
                    error = board.take()
                    if error is not None:
                        raise error
        return fn(*args, **kwargs)

    return checked


def raise_counts(counts, shape, ops) -> None:
    """Raise at once for per-unit non-finite counts already on the host or device (calibrate)."""
    host = counts if isinstance(counts, np.ndarray) else ops.to_host(counts)
    host = np.asarray(host).reshape(-1)
    total = int(host.sum(dtype=np.int64))
    if total:
        first = int(np.flatnonzero(host)[0]) if host.size > 1 else None
        raise NonFiniteError(nonfinite_message(total, first, shape))


def nonfinite_error(x2: np.ndarray, shape: tuple[int, ...], name: str = "x") -> NonFiniteError:
    """The NonFiniteError of NumPy data: counts the NaN/Inf values (of the data rounded to
    float32, as the contract reads them) and locates the first."""
    def finite(a):
        with np.errstate(over="ignore"):
            return np.isfinite(a.astype(np.float32, copy=False))

    counts = run_blocks(lambda s: np.count_nonzero(~finite(x2[s[0]:s[1], s[2]:s[3]])),
                        *x2.shape)
    total = int(sum(counts))
    flat = np.flatnonzero(~finite(x2.reshape(-1)))[0] if total else 0
    where = tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()
    value = x2.reshape(-1)[flat]
    return NonFiniteError(
        f"{name} has {total} non-finite value(s) (NaN or Inf, once rounded to float32) in its "
        "calibration data; the "
        f"first is {value} at index {where}. Clean the data, or pass ignore_nonfinite=True "
        "to calibrate over the finite values only"
    )
