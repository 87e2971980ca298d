"""gpuquant: int4 / int8 / int16 tensor quantization with GPU kernels and a NumPy reference.

>>> import numpy as np, gpuquant as gq
>>> w = np.random.default_rng(0).standard_normal((256, 512)).astype(np.float32)
>>> qt = gq.quantize(w, gq.QuantConfig.int4_per_group(group_size=128))
>>> qt.data.shape, qt.scale.shape
((256, 256), (256, 4))
>>> bool(gq.sqnr(w, qt.dequantize()) > 15)
True
"""

from . import export  # gq.export.*: imports no optional package until called
from .calibration.calibrate import Calibrator, calibrate
from .config import MSE, Entropy, Granularity, Percentile, QuantConfig, Scheme
from .core.packing import pack_int4, unpack_int4
from .core.qparams import QParams
from .dynamic import DynamicQuantizer
from .errors import (
    BackendUnavailableError,
    CalibrationRequiredError,
    EmptyTensorError,
    FormatError,
    InvalidBitWidthError,
    InvalidCalibrationError,
    InvalidChannelCountError,
    InvalidDtypeError,
    InvalidShapeError,
    NonFiniteError,
    OutputPathError,
    QuantizationError,
    UnsupportedSchemeError,
)
from .io import load, save
from .metrics import mse, sqnr
from .quantize import quantize
from .tensor import QuantizedTensor


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gpuquant")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


__version__ = _version()

_LAZY = {"nn": ("gpuquant.nn", None), "model": ("gpuquant.model", None),
         "quantize_model": ("gpuquant.model", "quantize_model"),
         "export_model": ("gpuquant.model", "export_model")}


def __getattr__(name: str):
    """gq.nn (needs torch), gq.model, gq.quantize_model and gq.export_model, on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module 'gpuquant' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    try:
        found = importlib.import_module(module)
    except ImportError as exc:
        if "torch" not in str(exc):
            raise
        raise BackendUnavailableError(f"gq.{name} needs PyTorch: pip install torch") from None
    return found if attr is None else getattr(found, attr)

__all__ = [
    "BackendUnavailableError", "CalibrationRequiredError", "Calibrator", "DynamicQuantizer",
    "EmptyTensorError", "Entropy", "FormatError", "MSE", "Granularity", "InvalidBitWidthError",
    "InvalidCalibrationError", "InvalidChannelCountError", "InvalidDtypeError",
    "InvalidShapeError", "NonFiniteError", "OutputPathError", "Percentile", "QParams", "QuantConfig",
    "QuantizationError", "QuantizedTensor", "Scheme", "UnsupportedSchemeError", "calibrate",
    "export", "export_model", "load", "mse", "pack_int4", "quantize", "quantize_model", "save",
    "sqnr", "unpack_int4",
]
