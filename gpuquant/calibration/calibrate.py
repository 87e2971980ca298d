"""Calibration: from data to per-unit ranges (lo, hi) and qparams.

``calibrate`` handles one tensor. ``Calibrator`` streams many batches: exact
min/max, or growing histograms for percentile, entropy and MSE. States save
to dicts and merge across processes, so a data-parallel job can calibrate on
every rank and reduce the states.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from ..backends import select
from ..backends.array_ops import ops_for
from ..config import QuantConfig
from ..core.frameworks import prepare
from ..core.layout import Layout
from ..core.nonfinite import entry
from ..core.qparams import QParams
from ..errors import (
    CalibrationRequiredError,
    InvalidCalibrationError,
    InvalidShapeError,
    QuantizationError,
    UnsupportedSchemeError,
)
from .averages import mean_of_sums, weighted_sums
from .dispatch import calibration_range
from .histograms import DEFAULT_BINS, HistogramState, check_calibrator_state, check_momentum

__all__ = ["calibrate", "Calibrator"]


@entry
def calibrate(x: Any, config: QuantConfig | None = None, backend: str | None = None) -> QParams:
    """Per-unit scales and zero points of ``x`` under ``config``, in ``x``'s framework.

    On a GPU this waits for the device once (it returns host decisions) and raises
    NaN/Inf at once; a NaN found by an earlier GPU quantize is raised here too.
    """
    config = QuantConfig() if config is None else config
    if config.is_float:
        raise UnsupportedSchemeError(
            f"calibrate() gives integer qparams; {config.describe()} computes its scales in "
            "gq.quantize (static FP8 scales: gq.Calibrator)")
    x, info = prepare(x)
    layout = Layout.of(info.shape, config)
    be = select(info, backend)
    lo, hi = calibration_range(be, be.native(x, info).reshape(layout.rows, layout.cols),
                               layout, config)
    scale, zero_point = be.qparams(lo, hi, config)
    return QParams(be.wrap(scale, info), be.wrap(zero_point, info))


class Calibrator:
    """Static calibration over many batches.

    >>> cal = Calibrator(QuantConfig.int8_per_channel(axis=-1))
    >>> for batch in batches:            # doctest: +SKIP
    ...     cal.update(batch)
    >>> params = cal.qparams()           # doctest: +SKIP

    Min/max: with ``momentum=None`` (default) the range is the exact min and
    max over every batch; with a momentum m in (0, 1] it is a moving average,
    ``lo += m * (batch_lo - lo)`` per batch after the first (PyTorch's
    MovingAverageMinMaxObserver).

    Percentile, entropy and MSE keep a histogram per unit whose range grows
    without dropping counts (gpuquant.calibration.histograms states the approximation and
    its error bound: at most one bin, 2R / bins with R <= 2 max|x|; ``bins`` is a power
    of two, so the counts do not depend on the order of the batches).

    Every batch must give the same qparams shape (channels, groups) and live
    on the same backend. States save to dicts of plain values and NumPy
    arrays, and merge across processes: exactly for min/max and histograms.
    """

    def __init__(self, config: QuantConfig | None = None, momentum: float | None = None,
                 backend: str | None = None, bins: int = DEFAULT_BINS):
        self.config = QuantConfig() if config is None else config
        if not isinstance(self.config, QuantConfig):
            raise QuantizationError(f"config must be a gq.QuantConfig, got "
                                    f"{type(self.config).__name__}")
        self.momentum = check_momentum(momentum)
        if self.config.is_float:
            from ..formats.parts import static_fp8_qparams

            static_fp8_qparams(np.zeros(0), np.zeros(0), self.config)  # FP8 scales only
        if momentum is not None and self.config.calibration != "minmax":
            raise InvalidCalibrationError("momentum applies to calibration='minmax' only")
        self._lock = threading.RLock()  # update, merge and state calls from several threads
        self.backend = backend
        self.batches = 0
        self._lo: np.ndarray | None = None
        self._hi: np.ndarray | None = None
        self._backend_name: str | None = None
        self._unit_shape: tuple[int, ...] | None = None
        self._hist = None if self.config.calibration == "minmax" else HistogramState(bins)

    def __getstate__(self) -> dict[str, Any]:  # copy and pickle without the lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _lock=threading.RLock())

    @entry
    def update(self, batch: Any) -> Calibrator:
        """Fold one batch into the running state. Returns self. NaN/Inf raise here, as do
        those an earlier GPU quantize found. Safe to call from several threads (one batch
        at a time is folded in; the result equals a sequential run)."""
        x, info = prepare(batch, "batch")
        with self._lock:
            return self._update(x, info)

    def _update(self, x: Any, info: Any) -> Calibrator:
        layout = Layout.of(info.shape, self.config)
        be = select(info, self.backend)
        if self._backend_name not in (None, be.name):
            raise QuantizationError(
                f"batch lives on backend {be.name!r} but earlier batches were on "
                f"{self._backend_name!r}; a Calibrator takes batches from one backend"
            )
        if self._unit_shape is not None and layout.unit_shape != self._unit_shape:
            raise InvalidShapeError(
                f"batch of shape {info.shape} gives qparams of shape {layout.unit_shape}, but "
                f"earlier batches gave {self._unit_shape}"
            )
        x2 = be.native(x, info).reshape(layout.rows, layout.cols)
        lo_dev, hi_dev = be.minmax(x2, layout, self.config.ignore_nonfinite)
        lo, hi = _host(lo_dev), _host(hi_dev)
        self._backend_name, self._unit_shape = be.name, layout.unit_shape
        if self._hist is not None:
            radius = self._hist.radius_for(np.maximum(np.abs(lo), np.abs(hi)))
            on_device = ops_for(lo_dev).from_host(
                radius.astype(np.float32).reshape(layout.unit_shape), lo_dev)
            counts = be.abs_histogram(x2, layout, on_device, self._hist.bins, signed=True)
            self._hist.add(_host(counts), lo, hi)
            self.batches += 1
            return self
        self._fold(lo, hi, 1)
        return self

    def _fold(self, lo: np.ndarray, hi: np.ndarray, batches: int) -> None:
        if self._lo is None:
            self._lo, self._hi = lo.astype(np.float32), hi.astype(np.float32)
        elif self.momentum is None:
            self._lo = np.minimum(self._lo, lo)
            self._hi = np.maximum(self._hi, hi)
        else:
            m = np.float32(self.momentum)
            self._lo = (self._lo + m * (lo - self._lo)).astype(np.float32)
            self._hi = (self._hi + m * (hi - self._hi)).astype(np.float32)
        self.batches += batches

    def range(self) -> tuple[np.ndarray, np.ndarray]:
        """The float32 (lo, hi) per unit by the config's method, as NumPy arrays."""
        with self._lock:
            return self._range()

    def _range(self) -> tuple[np.ndarray, np.ndarray]:
        if self.batches == 0:
            raise CalibrationRequiredError(
                "Calibrator.qparams() was called before any update(batch); feed it data first"
            )
        if self._hist is not None:
            lo, hi = self._hist.range(self.config)
            return lo.reshape(self._unit_shape), hi.reshape(self._unit_shape)
        return self._lo, self._hi

    def qparams(self) -> QParams:
        """Scales and zero points of the calibrated range (NumPy arrays)."""
        from ..core.qparams import compute_qparams

        lo, hi = self.range()
        cfg = self.config
        if cfg.is_float:  # static FP8 scales max(|lo|, |hi|) / fmax, zero points 0
            from ..formats.parts import static_fp8_qparams

            return QParams(*static_fp8_qparams(lo, hi, cfg))
        return QParams(*compute_qparams(lo, hi, cfg.qmin, cfg.qmax, cfg.symmetric,
                                        scale_rule=cfg.scale_rule))

    # ------------------------------------------------------ state and merging
    def state_dict(self) -> dict[str, Any]:
        """A dict of plain Python values (and NumPy arrays for histograms);
        :meth:`load_state_dict` restores it."""
        with self._lock:
            return self._state_dict()

    def _state_dict(self) -> dict[str, Any]:
        lo, hi = (None, None) if self._lo is None else (self._lo.tolist(), self._hi.tolist())
        return {"config": self.config.to_dict(), "momentum": self.momentum,
                "batches": self.batches, "backend": self._backend_name,
                "unit_shape": None if self._unit_shape is None else list(self._unit_shape),
                "lo": lo, "hi": hi,
                "histogram": None if self._hist is None else self._hist.state()}

    def load_state_dict(self, state: dict[str, Any]) -> Calibrator:
        """Restore a :meth:`state_dict`, checked first (InvalidCalibrationError, or the
        config's own error, naming the bad field; nothing changes then)."""
        return self._load_checked(check_calibrator_state(state))

    def _load_checked(self, state: dict[str, Any]) -> Calibrator:
        shape, lo, hi, hist = state["unit_shape"], state["lo"], state["hi"], state["histogram"]
        with self._lock:
            self.config, self.momentum = QuantConfig.from_dict(state["config"]), state["momentum"]
            self.batches, self._backend_name = state["batches"], state["backend"]
            self._unit_shape = None if shape is None else tuple(shape)
            minmax = hist is None
            self._lo = np.asarray(lo, np.float32) if minmax and lo is not None else None
            self._hi = np.asarray(hi, np.float32) if minmax and hi is not None else None
            self._hist = None if minmax else HistogramState.from_state(hist)
        return self

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Calibrator:
        """A new Calibrator holding a checked :meth:`state_dict`."""
        state = check_calibrator_state(state)
        return cls(QuantConfig.from_dict(state["config"]))._load_checked(state)

    def merge(self, other: Calibrator) -> Calibrator:
        """Fold another calibrator's state into this one. Returns self. Moving averages
        combine by gpuquant.calibration.averages, the rule ``all_reduce`` uses."""
        if not isinstance(other, Calibrator):
            raise QuantizationError(f"Calibrator.merge takes a gq.Calibrator, got "
                                    f"{type(other).__name__}")
        if other.config != self.config or other.momentum != self.momentum:
            raise QuantizationError(
                f"cannot merge calibrators of different configs or momentum: {self.config} "
                f"(momentum={self.momentum}) and {other.config} (momentum={other.momentum})")
        with self._lock:
            self._merge(other.state_dict())
        return self

    def _merge(self, other: dict[str, Any]) -> None:
        if other["batches"] == 0:
            return
        shape = tuple(other["unit_shape"])
        if self._unit_shape is not None and shape != self._unit_shape:
            raise InvalidShapeError(
                f"cannot merge qparams of shape {shape} into {self._unit_shape}")
        lo, hi = (None, None) if other["lo"] is None else (
            np.asarray(other["lo"], np.float32), np.asarray(other["hi"], np.float32))
        if self.batches == 0:
            self._backend_name, self._unit_shape = other["backend"], shape
        if self._hist is not None:
            self._hist.merge(HistogramState.from_state(other["histogram"]))
            self.batches += other["batches"]
        elif self._lo is None or self.momentum is None:
            self._fold(lo, hi, other["batches"])
        else:
            units = self._lo.size
            sums = weighted_sums(self._lo, self._hi, self.batches, units) + \
                weighted_sums(lo, hi, other["batches"], units)
            new_lo, new_hi, self.batches = mean_of_sums(sums)
            self._lo, self._hi = new_lo.reshape(self._lo.shape), new_hi.reshape(self._hi.shape)

    def __repr__(self) -> str:
        return f"Calibrator({self.config!r}, momentum={self.momentum}, batches={self.batches})"

    def all_reduce(self, group: Any = None) -> Calibrator:
        """Merge the states of every rank of a torch.distributed ``group`` (default: the
        default group) in place; a collective every rank must call. Afterwards every rank
        holds the state of one process that saw all batches (gpuquant.calibration.collective)."""
        from .collective import all_reduce_calibrator

        return all_reduce_calibrator(self, group)


def _host(a: Any) -> np.ndarray:
    """Per-unit results to NumPy (tiny arrays; a device sync for GPU inputs)."""
    return ops_for(a).to_host(a)
