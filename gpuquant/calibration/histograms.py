"""Histograms that grow their range: percentile, entropy and MSE over many batches.

Each unit keeps int64 counts of its values over [-R, R) in ``bins`` equal bins
(4096 by default; a power of two >= 4), R a power of two strictly above the
unit's max|x| (at least 2^-100, at most 2^127). When a batch reaches R, R
doubles: pairs of neighbouring bins merge into the middle half, so no count is
ever dropped, and two states merge exactly by doubling the narrower to the
wider R and adding counts. The exact min and max of every unit are kept beside
the counts.

The binning (backends' ``abs_histogram(..., signed=True)``, written once in
NumPy and once in Triton): bin = floor(x * s) + bins / 2 with s = (bins / 2) / R,
clipped to [0, bins - 1]. s is a power of two, so x * s is exact (a product
below 2^-126 may round, but keeps its sign, and its floor, 0 or -1, needs only
the sign: a negative one that rounds to -0 is taken as below zero), and the bin
is the exact floor. Then floor(x * s / 2) = floor(floor(x * s) / 2): binning at
2R is exactly doubling the histogram at R, and as R is strictly above every
value, none is ever clipped. The counts (and so every qparam) are the same bits
whatever the batch order, split or merge (``Calibrator.merge``, ``all_reduce``).
Values of magnitude 2^127 or more (R is capped there) fall in the end bins, the
same in any order, as they are only ever binned at that cap.

The approximation: values are known only to their bin. With bin width
w = 2R / bins and R <= 2 * max|x| (R doubles only when needed; above the
2^-100 floor):
- a percentile interpolates (as the exact contract does) between estimates
  of the two order statistics around its rank, each taken as evenly spread
  within its bin and so within w of the truth; the result, clamped to the
  exact [min, max], is within w <= 4 max|x| / bins (0.1 % of max|x| at 4096
  bins);
- entropy runs the same KL search on the folded |x| histogram (bins / 2
  bins over [0, R]), so its threshold is a multiple of w: within w of the
  single-tensor search on a histogram of that width;
- MSE evaluates each candidate on the bin centres weighted by their counts:
  the estimate of each candidate's squared error is off by at most the
  within-bin spread, n * w^2 / 4 for n values, for every candidate alike.
"""

from __future__ import annotations

import numpy as np

from ..backends import BACKENDS
from ..backends.array_ops import NumpyOps
from ..config import MSE, Entropy, Percentile, QuantConfig
from ..core.qparams import compute_qparams
from ..errors import InvalidCalibrationError, InvalidShapeError
from .searches import first_minimum, kl_best_bins, mse_factors

__all__ = ["HistogramState", "DEFAULT_BINS", "RADIUS_FLOOR", "RADIUS_CAP", "check_momentum",
           "check_calibrator_state"]

DEFAULT_BINS = 4096
MAX_BINS = 1 << 24
RADIUS_FLOOR = 2.0 ** -100  # (bins / 2) / R stays a finite float32 for bins <= 2^24
RADIUS_CAP = 2.0 ** 127  # the largest power of two in float32


def radius_above(amax: np.ndarray) -> np.ndarray:
    """The smallest power of two strictly above each value, in [2^-100, 2^127]."""
    v = np.maximum(np.asarray(amax, np.float64), RADIUS_FLOOR / 2)
    return np.minimum(np.ldexp(1.0, np.frexp(v)[1]), RADIUS_CAP)  # v in [2^(e-1), 2^e)


def _bins_ok(bins) -> bool:
    return not isinstance(bins, bool) and isinstance(bins, (int, np.integer)) \
        and 4 <= bins <= MAX_BINS and bins & (bins - 1) == 0


class HistogramState:
    """Per-unit counts over a growing symmetric range, plus the exact min and max."""

    def __init__(self, bins: int = DEFAULT_BINS):
        if not _bins_ok(bins):
            raise InvalidCalibrationError(f"histogram bins={bins!r} must be a power of two in "
                                          "[4, 2^24]")
        self.bins = int(bins)
        self.counts: np.ndarray | None = None  # (units, bins) int64
        self.radius: np.ndarray | None = None  # (units,) float64 powers of two
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None

    # ---------------------------------------------------------------- growing
    def radius_for(self, amax: np.ndarray) -> np.ndarray:
        """Grow every unit's range strictly beyond amax (merging bins); return the radii."""
        return self.grow_to(radius_above(amax.reshape(-1)))

    def grow_to(self, radius: np.ndarray) -> np.ndarray:
        """Grow every unit's range to at least ``radius`` (powers of two, merging bins; the
        radius of a unit seen nothing yet is at least 2^-100) and return the radii."""
        need = np.maximum(np.asarray(radius, np.float64).reshape(-1), RADIUS_FLOOR)
        if self.radius is None:
            self.radius = need
            self.counts = np.zeros((need.size, self.bins), np.int64)
            return self.radius
        while np.any(self.radius < need):
            grow = self.radius < need
            self.counts[grow] = self._doubled(self.counts[grow])
            self.radius = np.where(grow, self.radius * 2, self.radius)
        return self.radius

    def _doubled(self, counts: np.ndarray) -> np.ndarray:
        """Counts over [-2R, 2R): bins 2k and 2k + 1 merge into bin bins / 4 + k, as
        floor(x * s / 2) + bins / 2 = floor((floor(x * s) + bins / 2) / 2) + bins / 4."""
        half = counts.reshape(counts.shape[0], self.bins // 2, 2).sum(axis=-1)
        out = np.zeros_like(counts)
        out[:, self.bins // 4: self.bins // 4 + self.bins // 2] = half
        return out

    def add(self, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        """Add a batch's counts (taken over the current radii) and its exact range."""
        self.counts += counts.reshape(self.counts.shape)
        lo, hi = lo.reshape(-1), hi.reshape(-1)
        self.lo = lo if self.lo is None else np.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else np.maximum(self.hi, hi)

    def merge(self, other: HistogramState) -> None:
        if other.counts is None:
            return
        if self.counts is None:
            self.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v)
                                  for k, v in other.__dict__.items()})
            return
        if other.counts.shape != self.counts.shape:
            raise InvalidShapeError(f"cannot merge histograms of shape {other.counts.shape} "
                                    f"into {self.counts.shape}")
        counts = other.counts.copy()
        radius = other.radius.copy()
        target = np.maximum(self.radius, radius)
        self.grow_to(target)
        while np.any(radius < target):
            grow = radius < target
            counts[grow] = self._doubled(counts[grow])
            radius = np.where(grow, radius * 2, radius)
        self.add(counts, other.lo, other.hi)

    # ---------------------------------------------------------------- reading
    def _edges(self):
        width = 2 * self.radius / self.bins
        return -self.radius, width

    def _order_statistic(self, cum: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Estimated k-th smallest value per unit (0-based integer k): inside its bin, the
        bin's values are taken as evenly spread, so the estimate is within one bin."""
        start, width = self._edges()
        b = np.array([np.searchsorted(c, r, side="right") for c, r in zip(cum, k)])
        b = np.minimum(b, self.bins - 1)
        before = np.where(b > 0, np.take_along_axis(cum, np.maximum(b - 1, 0)[:, None], 1)[:, 0],
                          0)
        inside = np.maximum(self.counts[np.arange(b.size), b], 1)
        return start + (b + (k - before + 0.5) / inside) * width

    def percentiles(self, lower: float, upper: float) -> tuple[np.ndarray, np.ndarray]:
        """The contract's interpolation between estimated order statistics, clamped to
        the exact [min, max]: both ends within a bin, so the result is too."""
        cum = np.cumsum(self.counts, axis=1)
        n = cum[:, -1]
        out = []
        for p in (lower, upper):
            h = (n - 1) * p / 100.0
            i = np.floor(h)
            j = np.minimum(i + 1, n - 1)
            vi, vj = self._order_statistic(cum, i), self._order_statistic(cum, j)
            value = vi + (h - i) * (vj - vi)
            out.append(np.clip(value, self.lo, self.hi).astype(np.float32))
        return out[0], out[1]

    def entropy_range(self, config: QuantConfig) -> tuple[np.ndarray, np.ndarray]:
        half = self.bins // 2
        folded = self.counts[:, half:] + self.counts[:, :half][:, ::-1]
        best = kl_best_bins(NumpyOps(), folded, 1 << (config.bits - 1))
        t = (best * (self.radius / half)).astype(np.float32)
        if config.symmetric:
            return -t, t
        return np.maximum(self.lo, -t), np.minimum(self.hi, t)

    def mse_range(self, config: QuantConfig) -> tuple[np.ndarray, np.ndarray]:
        factors = mse_factors(config.calibration.candidates)
        start, width = self._edges()
        centres = (start[:, None] + (np.arange(self.bins) + 0.5) * width[:, None]).astype(
            np.float32)
        lo, hi = self.lo[:, None] * factors, self.hi[:, None] * factors
        scale, zp = compute_qparams(lo, hi, config.qmin, config.qmax, config.symmetric,
                                    scale_rule=config.scale_rule)
        inv = (np.float32(1) / scale)[:, :, None]
        z = zp.astype(np.float32)[:, :, None]
        errors = np.empty(scale.shape)
        step = max(1, (1 << 24) // (len(factors) * self.bins))
        for u0 in range(0, centres.shape[0], step):
            rows = slice(u0, u0 + step)
            c = centres[rows, None, :]
            with np.errstate(all="ignore"):
                v = c / scale[rows, :, None] if config.scale_rule == "half_range" else c * inv[rows]
                q = np.clip(np.rint(v) + z[rows], config.qmin, config.qmax)
                deq = (q - z[rows]) * scale[rows, :, None]
            d = deq.astype(np.float64) - c
            errors[rows] = (d * d * self.counts[rows, None, :]).sum(-1)
        pick = first_minimum(NumpyOps(), errors)
        f = factors[pick]
        return (self.lo * f).astype(np.float32), (self.hi * f).astype(np.float32)

    def range(self, config: QuantConfig) -> tuple[np.ndarray, np.ndarray]:
        cal = config.calibration
        if isinstance(cal, Percentile):
            return self.percentiles(cal.lower, cal.upper)
        if isinstance(cal, Entropy):
            return self.entropy_range(config)
        if isinstance(cal, MSE):
            return self.mse_range(config)
        return self.lo, self.hi

    # ---------------------------------------------------------------- state
    def state(self) -> dict:
        return {"bins": self.bins, "counts": self.counts, "radius": self.radius,
                "lo": self.lo, "hi": self.hi}

    @classmethod
    def from_state(cls, state: dict) -> HistogramState:
        """Rebuild a state saved by :meth:`state`, checking every field (a tampered or
        foreign dict raises InvalidCalibrationError naming the field)."""
        if not isinstance(state, dict) or not {"bins", "counts", "radius", "lo", "hi"} <= set(
                state):
            raise InvalidCalibrationError("histogram state must be a dict with bins, counts, "
                                          "radius, lo and hi")
        bins = state["bins"]
        if not _bins_ok(bins):
            raise InvalidCalibrationError(f"histogram state: bins={bins!r} must be a power of "
                                          "two in [4, 2^24]")
        h = cls(int(bins))
        given = [state[k] is not None for k in ("counts", "radius", "lo", "hi")]
        if not any(given):
            return h
        if not all(given):
            raise InvalidCalibrationError("histogram state: counts, radius, lo and hi must be "
                                          "all present or all None")
        counts = _state_array(state["counts"], "counts", "iu", np.int64)
        units = counts.shape[0] if counts.ndim == 2 else -1
        if counts.ndim != 2 or counts.shape[1] != h.bins or (counts < 0).any():
            raise InvalidCalibrationError(f"histogram state: counts must be non-negative "
                                          f"integers of shape (units, {h.bins}), got shape "
                                          f"{counts.shape}")
        radius = _state_array(state["radius"], "radius", "f", np.float64, units)
        lo = _state_array(state["lo"], "lo", "f", np.float32, units)
        hi = _state_array(state["hi"], "hi", "f", np.float32, units)
        with np.errstate(all="ignore"):
            pow2 = np.exp2(np.round(np.log2(radius))) == radius
        # states saved before the strict radius (a value at R, 2^-126 for zeros) still load
        if not (np.isfinite(radius).all() and (radius > 0).all()
                and (radius <= RADIUS_CAP).all() and pow2.all()):
            raise InvalidCalibrationError("histogram state: radius must hold positive powers "
                                          "of two up to 2^127")
        if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()
                and (np.maximum(-lo, hi) <= radius).all()):
            raise InvalidCalibrationError("histogram state: lo and hi must be finite, lo <= hi, "
                                          "inside [-radius, radius]")
        h.counts, h.radius, h.lo, h.hi = counts, radius, lo, hi
        return h


def _state_array(value, name: str, kinds: str, dtype, units: int | None = None) -> np.ndarray:
    """A state field as an array of ``dtype``; InvalidCalibrationError for the wrong kind
    (floats where integers belong, complex, strings) or, with ``units``, shape (units,)."""
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise InvalidCalibrationError(f"state: {name} is not an array ({exc})") from None
    if arr.dtype.kind not in kinds and not (arr.size == 0 and arr.dtype.kind == "f"):
        raise InvalidCalibrationError(f"state: {name} has dtype {arr.dtype}; "
                                      f"expected {np.dtype(dtype).name}")
    if units is not None and arr.shape != (units,):
        raise InvalidCalibrationError(f"state: {name} has shape {arr.shape}; "
                                      f"expected ({units},)")
    return arr.astype(dtype)


def check_momentum(momentum) -> float | None:
    """A Calibrator's momentum: None, or a real number in (0, 1]."""
    if momentum is None:
        return None
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float, np.integer,
                                                               np.floating)):
        raise InvalidCalibrationError(f"momentum={momentum!r} must be a number in (0, 1] or None")
    if not 0.0 < float(momentum) <= 1.0:
        raise InvalidCalibrationError(f"momentum={momentum!r} must lie in (0, 1] or be None")
    return float(momentum)


def check_calibrator_state(state) -> dict:
    """Check a ``Calibrator.state_dict()`` before it is loaded; return it normalised.

    Raises InvalidCalibrationError (or the config's own error) naming the bad
    field: a foreign config, momentum outside (0, 1], negative batches, an
    unknown backend, lo/hi not matching unit_shape, a histogram where the
    calibration is min/max (or none where it is not), tampered histograms.
    """
    keys = {"config", "momentum", "batches", "backend", "unit_shape", "lo", "hi", "histogram"}
    if not isinstance(state, dict):
        raise InvalidCalibrationError(f"not a Calibrator state: a dict with {sorted(keys)}, got "
                                      f"{type(state).__name__}")
    if not keys <= set(state):
        raise InvalidCalibrationError(f"not a Calibrator state: missing {sorted(keys - set(state))}")
    config = QuantConfig.from_dict(state["config"])
    momentum = check_momentum(state["momentum"])
    if momentum is not None and config.calibration != "minmax":
        raise InvalidCalibrationError("Calibrator state: momentum applies to minmax only")
    batches, backend, shape = state["batches"], state["backend"], state["unit_shape"]
    if isinstance(batches, bool) or not isinstance(batches, (int, np.integer)) or batches < 0:
        raise InvalidCalibrationError(f"Calibrator state: batches={batches!r} must be an "
                                      "integer >= 0")
    if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
        raise InvalidCalibrationError(f"Calibrator state: backend={backend!r} is unknown; "
                                      f"accepted: None, {', '.join(map(repr, BACKENDS))}")
    if shape is not None and (not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise InvalidCalibrationError(f"Calibrator state: unit_shape={shape!r} must be a list "
                                      "of non-negative integers")
    if (batches == 0) != (shape is None):
        raise InvalidCalibrationError("Calibrator state: unit_shape is set exactly when "
                                      "batches > 0")
    units = None if shape is None else int(np.prod(shape, dtype=np.int64))
    out = dict(state, config=config.to_dict(), momentum=momentum, batches=int(batches),
               unit_shape=None if shape is None else list(shape))
    if config.calibration == "minmax":
        if state["histogram"] is not None:
            raise InvalidCalibrationError("Calibrator state: a histogram with minmax calibration")
        out["lo"], out["hi"] = _checked_range(state["lo"], state["hi"], units)
        return out
    hist = HistogramState.from_state(state["histogram"])
    if (hist.counts is None) != (units is None) or (
            hist.counts is not None and hist.counts.shape[0] != units):
        raise InvalidCalibrationError("Calibrator state: histogram units do not match "
                                      f"unit_shape={shape!r}")
    out["lo"] = out["hi"] = None  # the histogram holds the range
    return out


def _checked_range(lo, hi, units: int | None):
    if units is None:
        if lo is not None or hi is not None:
            raise InvalidCalibrationError("Calibrator state: lo/hi set but no batches")
        return None, None
    lo = _state_array(lo, "lo", "fiu", np.float32)
    hi = _state_array(hi, "hi", "fiu", np.float32)
    if lo.size != units or hi.size != units:
        raise InvalidCalibrationError(f"Calibrator state: lo and hi need {units} value(s), got "
                                      f"{lo.size} and {hi.size}")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all() and (lo <= hi).all()):
        raise InvalidCalibrationError("Calibrator state: lo and hi must be finite with lo <= hi")
    return lo.tolist(), hi.tolist()
