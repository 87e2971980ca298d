"""Reporting NaN/Inf in GPU calibration data without stalling the stream.

The min/max kernels count non-finite values in the same pass that reduces
the data. ``gq.calibrate`` reads the count at once (it returns host-side
decisions anyway). ``gq.quantize`` on a GPU must not synchronise, so the
count is copied to pinned host memory asynchronously, behind a CUDA event,
and checked later:

- at the start of every later gpuquant call, without waiting: a finished
  check with a non-zero count raises ``NonFiniteError`` there, naming the
  tensor's shape and the first unit (channel, group or row) affected;
- by ``QuantizedTensor.check_finite()``, which waits for it.

The quantized result itself is well defined either way: ranges come from
the finite values, NaN codes are the zero point and infinities clamp, as
with ``ignore_nonfinite=True``. Inside CUDA-graph capture no check is
recorded: validate inputs before capturing.
"""

from __future__ import annotations

import threading

import numpy as np

from .errors import NonFiniteError

__all__ = ["NonFiniteCheck", "raise_ready", "wait_all", "nonfinite_message"]

_pending: list[NonFiniteCheck] = []
_lock = threading.Lock()


def nonfinite_message(total: int, first_unit: int | None, shape, name: str = "x") -> str:
    where = f"; the first is in unit {first_unit} (flat index into the qparams)" \
        if first_unit is not None else ""
    return (f"{name} of shape {tuple(shape)} has {total} non-finite value(s) (NaN or Inf) in its "
            f"calibration data{where}. Clean the data, or pass ignore_nonfinite=True to "
            "calibrate over the finite values only")


class NonFiniteCheck:
    """A pending look at per-unit non-finite counts of one quantize call."""

    def __init__(self, counts, shape, ops, defer: bool):
        self.shape = tuple(shape)
        self._ops = ops
        self._event = None
        if defer and ops.is_gpu(counts) and ops.capturing():
            self._host = None  # inside CUDA-graph capture: nothing may wait or copy out
            return
        if defer and ops.is_gpu(counts):
            self._host, self._event = ops.async_host_copy(counts)
            with _lock:
                _pending.append(self)
        else:
            self._host = ops.to_host(counts)
            self.raise_if_bad()

    def done(self) -> bool:
        return self._event is None or self._ops.event_done(self._event)

    def raise_if_bad(self) -> None:
        """Wait for the counts if needed; raise NonFiniteError when any is non-zero."""
        if self._event is not None:
            self._event.synchronize()
        with _lock:
            if self in _pending:
                _pending.remove(self)
        if self._host is None:
            return
        counts = np.asarray(self._host).reshape(-1)
        total = int(counts.sum(dtype=np.int64))
        if total:
            first = int(np.flatnonzero(counts)[0]) if counts.size > 1 else None
            raise NonFiniteError(nonfinite_message(total, first, self.shape))


def raise_ready() -> None:
    """Raise for the first finished deferred check that found NaN/Inf (never waits)."""
    with _lock:
        ready = [c for c in _pending if c.done()]
    for check in ready:
        check.raise_if_bad()


def wait_all() -> None:
    """Wait for every deferred check; raise for the first that found NaN/Inf."""
    with _lock:
        pending = list(_pending)
    for check in pending:
        check.raise_if_bad()


def nonfinite_error(x2: np.ndarray, shape: tuple[int, ...], name: str = "x") -> NonFiniteError:
    """The NonFiniteError of NumPy data: counts the NaN/Inf values and locates the first."""
    from .chunks import run_blocks

    counts = run_blocks(lambda s: np.count_nonzero(~np.isfinite(x2[s[0]:s[1], s[2]:s[3]])),
                        *x2.shape)
    total = int(sum(counts))
    flat = np.flatnonzero(~np.isfinite(x2.reshape(-1)))[0] if total else 0
    where = tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()
    value = x2.reshape(-1)[flat]
    return NonFiniteError(
        f"{name} has {total} non-finite value(s) (NaN or Inf) in its calibration data; the "
        f"first is {value} at index {where}. Clean the data, or pass ignore_nonfinite=True "
        "to calibrate over the finite values only"
    )
