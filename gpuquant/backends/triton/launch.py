"""The one place a Triton kernel is launched, and a recorder that replaces it.

Every launcher calls :func:`launch`. Tests and ``python -m bench
--host-overhead`` wrap a call in :func:`recording`: launches are then
recorded (kernel name, grid, arguments, constexprs) instead of executed, so
launch counts, kernel specialisations and the host work around a launch can
be measured on a machine without a GPU; ``recording(execute=True)`` records
and runs them (to count the reads of a calibration, say).

Triton launches on the stream its driver's ``get_current_stream`` names (torch's
current stream when torch is imported, else the device's default stream). CuPy
arrays launch on CuPy's: :func:`stream_stack` wraps that method once per driver, and
the wrapper answers with the last pointer a thread pushed on its stack (the CuPy
adapter's launch block, gpuquant.backends.array_ops) and otherwise asks the original,
so torch launches and other threads see what they saw before.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading

__all__ = ["launch", "recording", "Launch", "OPTIONS", "wrap_arrays_of", "stream_stack"]

OPTIONS = {"enable_fp_fusion": False}  # keep x * inv and the rounding adds unfused
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@dataclasses.dataclass
class Launch:
    """One recorded launch."""

    kernel: object  # the @triton.jit function
    grid: tuple
    args: tuple
    num_warps: int
    constexprs: dict

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


_recorder: list | None = None
_execute = False
_wrappers: dict[type, object] = {}  # array type -> what Triton takes as a pointer argument
_streams = threading.local()  # .stack: stream pointers pushed by this thread's launch blocks
_wrap_lock = threading.Lock()


def wrap_arrays_of(array_type: type, wrapper) -> None:
    """Pass arrays of ``array_type`` to kernels as ``wrapper(array)`` (CuPy arrays need one)."""
    _wrappers[array_type] = wrapper


def launch(kernel, grid, *args, num_warps: int = 4, **constexprs) -> None:
    """Launch ``kernel`` on ``grid`` (on the current device and stream), or record it."""
    if _wrappers:
        args = tuple(_wrappers[type(a)](a) if type(a) in _wrappers else a for a in args)
    if _recorder is not None:
        _recorder.append(Launch(kernel, tuple(grid), args, num_warps, constexprs))
        if not _execute:
            return
    if _INTERPRET:
        kernel[grid](*args, **constexprs)
    else:
        kernel[grid](*args, num_warps=num_warps, **constexprs, **OPTIONS)


@contextlib.contextmanager
def recording(execute: bool = False, sink=None):
    """Record launches instead of running them (``execute``: and run them too):
    ``with recording() as launches: ...``. ``sink``: any object with ``append`` to take
    each Launch instead of a new list (to keep a summary, not the arrays)."""
    global _recorder, _execute
    saved = _recorder, _execute
    _recorder, _execute = ([] if sink is None else sink), execute
    try:
        yield _recorder
    finally:
        _recorder, _execute = saved


def stream_stack():
    """(Triton's active driver, this thread's stack of stream pointers): while the stack is
    not empty, this thread's launches go to its last pointer. Wraps the driver's
    ``get_current_stream`` the first time (a read, not a write, on every later call)."""
    from triton.runtime import driver

    active = driver.active
    if not getattr(active.get_current_stream, "gpuquant_streams", False):
        _wrap_current_stream(active)
    stack = getattr(_streams, "stack", None)
    if stack is None:
        stack = _streams.stack = []
    return active, stack


def _wrap_current_stream(active) -> None:
    with _wrap_lock:  # two threads' first launches wrap it once
        original = active.get_current_stream
        if getattr(original, "gpuquant_streams", False):
            return

        def get_current_stream(*args, **kwargs):
            stack = getattr(_streams, "stack", None)
            return stack[-1] if stack else original(*args, **kwargs)

        get_current_stream.gpuquant_streams = True
        active.get_current_stream = get_current_stream
