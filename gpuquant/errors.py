"""Errors raised by gpuquant.

Every error derives from :class:`QuantizationError`, itself a ``ValueError``,
so ``except ValueError`` keeps working for callers that do not know gpuquant.
Messages name the argument that was wrong and what would be accepted.
"""

from __future__ import annotations

__all__ = [
    "QuantizationError",
    "UnsupportedSchemeError",
    "InvalidBitWidthError",
    "InvalidShapeError",
    "InvalidChannelCountError",
    "InvalidDtypeError",
    "InvalidCalibrationError",
    "EmptyTensorError",
    "CalibrationRequiredError",
    "NonFiniteError",
    "BackendUnavailableError",
    "FormatError",
    "OutputPathError",
]


class QuantizationError(ValueError):
    """Base class of every gpuquant error."""


class UnsupportedSchemeError(QuantizationError):
    """A scheme, calibration or combination of options that is not supported."""


class InvalidBitWidthError(UnsupportedSchemeError):
    """A bit width or scheme name outside int4, int8 and int16."""


class InvalidShapeError(QuantizationError):
    """An axis, group size, qparams or packed data that does not fit the tensor."""


class InvalidChannelCountError(InvalidShapeError):
    """``num_channels`` disagrees with the tensor's size along the channel axis."""


class InvalidDtypeError(QuantizationError):
    """An input dtype that cannot be quantized, or an unknown output dtype."""


class InvalidCalibrationError(QuantizationError):
    """Calibration parameters out of range (percentile bounds, bins, ...)."""


class EmptyTensorError(QuantizationError):
    """A tensor with no elements, where values are needed."""


class CalibrationRequiredError(QuantizationError):
    """qparams were asked of a Calibrator that has seen no data."""


class NonFiniteError(QuantizationError):
    """NaN or Inf in calibration data, while ``ignore_nonfinite`` is False."""


class BackendUnavailableError(QuantizationError):
    """The requested backend cannot serve this input on this machine."""


class FormatError(QuantizationError):
    """A file that is not a valid gpuquant safetensors file."""


class OutputPathError(QuantizationError):
    """An output path that cannot be written: its folder is missing, it is a folder, or the
    folder is not writable. The message names the path the caller gave."""
