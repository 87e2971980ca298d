"""Calibration methods with parameters: Percentile, Entropy and MSE (see gpuquant.config)."""

from __future__ import annotations

import dataclasses
from typing import Any, Union

import numpy as np

from ..errors import InvalidCalibrationError, UnsupportedSchemeError

__all__ = ["Percentile", "Entropy", "MSE", "MAX_ENTROPY_BINS", "MAX_MSE_CANDIDATES",
           "Calibration", "as_calibration"]

MAX_ENTROPY_BINS = 16384  # 8x TensorRT's 2048; the KL search costs O(bins^2) per unit
MAX_MSE_CANDIDATES = 1000  # 10x the default; each candidate is one pass over the data and
#                            float64 errors of (units, candidates): 1e9 asked 7.45 GiB


def _integer(value) -> int | None:
    """A Python int of an int or NumPy integer (never a bool); None for anything else."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value)


@dataclasses.dataclass(frozen=True)
class Percentile:
    """Percentile calibration: the unit's range is (P_lower, P_upper), in percent.

    Order statistics are interpolated linearly (NumPy's default method), so
    fractional bounds such as ``upper=99.99`` are meaningful.
    """

    lower: float = 0.01
    upper: float = 99.99

    def __post_init__(self) -> None:
        for name in ("lower", "upper"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                    value, (int, float, np.integer, np.floating)):
                raise InvalidCalibrationError(
                    f"Percentile {name}={value!r} must be a number in [0, 100]"
                )
            if not (0.0 <= value <= 100.0):
                raise InvalidCalibrationError(
                    f"Percentile {name}={value!r} is outside [0, 100]"
                )
            object.__setattr__(self, name, float(value))
        if self.lower >= self.upper:
            raise InvalidCalibrationError(
                f"Percentile lower={self.lower} must be below upper={self.upper}"
            )

    def __str__(self) -> str:
        return f"percentile({self.lower:g},{self.upper:g})"


@dataclasses.dataclass(frozen=True)
class Entropy:
    """Entropy (KL divergence) calibration, TensorRT's procedure (see gpuquant.calibration.searches).

    ``bins``: histogram bins of |x| over [0, amax] (2048 by default, from 2 to
    ``MAX_ENTROPY_BINS``, 16384).
    """

    bins: int = 2048

    def __post_init__(self) -> None:
        b = _integer(self.bins)
        if b is None or not 2 <= b <= MAX_ENTROPY_BINS:
            raise InvalidCalibrationError(
                f"Entropy bins={self.bins!r} must be an integer in [2, {MAX_ENTROPY_BINS}] "
                "(the limit bounds the O(bins^2) KL search)")
        object.__setattr__(self, "bins", b)

    def __str__(self) -> str:
        return "entropy" if self.bins == 2048 else f"entropy({self.bins})"


@dataclasses.dataclass(frozen=True)
class MSE:
    """MSE search: the range (lo, hi) shrunk by f = 1 - k / candidates, k = 0 .. candidates - 1,
    keeping the f with the least squared error (ties to the widest range).

    ``candidates``: 100 by default, at most ``MAX_MSE_CANDIDATES`` (1000).
    """

    candidates: int = 100

    def __post_init__(self) -> None:
        c = _integer(self.candidates)
        if c is None or not 1 <= c <= MAX_MSE_CANDIDATES:
            raise InvalidCalibrationError(
                f"MSE candidates={self.candidates!r} must be an integer in [1, {MAX_MSE_CANDIDATES}] (each "
                "candidate is one pass over the data)")
        object.__setattr__(self, "candidates", c)

    def __str__(self) -> str:
        return "mse" if self.candidates == 100 else f"mse({self.candidates})"


Calibration = Union[str, Percentile, Entropy, MSE]  # noqa: UP007 - a runtime alias on Python 3.10
NAMED_CALIBRATIONS = ("minmax", "percentile", "entropy", "mse")


def as_calibration(value: Any) -> Calibration:
    """QuantConfig's ``calibration``: a method object, or its name (lower case)."""
    if isinstance(value, (Percentile, Entropy, MSE)):
        return value
    name = value.strip().lower() if isinstance(value, str) else None
    named = {"percentile": Percentile, "entropy": Entropy, "mse": MSE}
    if name in named:
        return named[name]()
    if name not in NAMED_CALIBRATIONS:
        raise UnsupportedSchemeError(
            f"calibration={value!r} is not supported; accepted: 'minmax', 'percentile', "
            "'entropy', 'mse', gq.Percentile(lower, upper), gq.Entropy(bins), gq.MSE(candidates)"
        )
    return name
