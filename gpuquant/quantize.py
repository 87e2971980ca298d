"""gq.quantize: calibrate (unless qparams are given), quantize and pack."""

from __future__ import annotations

from typing import Any

import numpy as np

from .arrays import TensorInfo, prepare
from .backends import select
from .calibrate import calibration_range
from .config import QuantConfig
from .errors import InvalidCalibrationError, QuantizationError
from .layout import Layout
from .nonfinite import raise_ready
from .qparams import QParams
from .tensor import QuantizedTensor

__all__ = ["quantize"]


def quantize(x: Any, config: QuantConfig | None = None, qparams: Any = None,
             backend: str | None = None) -> QuantizedTensor:
    """Quantize ``x`` (NumPy, CuPy or torch) under ``config``.

    Args:
        x: a floating tensor: float16, float32, float64, or torch bfloat16.
        config: defaults to ``QuantConfig()`` (int8, per tensor, symmetric).
        qparams: a :class:`QParams` (or a (scale, zero_point) pair) to use
            instead of calibrating; shaped per unit as :func:`calibrate` returns.
        backend: None picks by where ``x`` lives; "numpy" or "triton" force one.

    Returns:
        A :class:`QuantizedTensor` whose arrays are in ``x``'s framework and device.
    """
    raise_ready()
    config = QuantConfig() if config is None else config
    if not isinstance(config, QuantConfig):
        raise QuantizationError(f"config must be a gq.QuantConfig, got {type(config).__name__}")
    x, info = prepare(x)
    layout = Layout.of(info.shape, config)
    be = select(info, backend)
    x2 = be.native(x, info).reshape(layout.rows, layout.cols)
    if qparams is not None:
        scale, zero_point = _given_qparams(qparams, layout, config, be, x, info)
        data = be.quantize(x2, layout, config, scale, zero_point, nan_possible=True)
    else:
        fused = None
        if config.calibration == "minmax":
            fused = be.calibrate_quantize(x2, layout, config)
        if fused is not None:
            data, scale, zero_point = fused
        else:
            lo, hi = calibration_range(be, x2, layout, config, defer=True)
            scale, zero_point = be.qparams(lo, hi, config)
            data = be.quantize(x2, layout, config, scale, zero_point,
                               nan_possible=config.ignore_nonfinite)
    stored = TensorInfo(info.framework, config.storage_dtype, layout.packed_shape(config.bits),
                        info.device)
    return QuantizedTensor(be.wrap(data.reshape(stored.shape), stored),
                           be.wrap(scale.reshape(layout.unit_shape), stored),
                           be.wrap(zero_point.reshape(layout.unit_shape), stored),
                           info.shape, info.dtype, config, info)


def _given_qparams(qparams: Any, layout: Layout, config: QuantConfig, be, x,
                   info: TensorInfo) -> tuple[Any, Any]:
    """Validate user qparams: shapes always; values too when they are on the CPU.

    qparams on the host for data on a GPU (a Calibrator's, say) are copied to
    the data's device: a few bytes per unit. The other way round is an error.
    """
    if isinstance(qparams, QParams):
        scale, zero_point = qparams.scale, qparams.zero_point
    else:
        try:
            scale, zero_point = qparams
        except (TypeError, ValueError):
            raise QuantizationError(
                "qparams must be a gq.QParams or a (scale, zero_point) pair"
            ) from None
    scale, sinfo = prepare(scale, "qparams.scale", require_float=False)
    zero_point, zinfo = prepare(zero_point, "qparams.zero_point", require_float=False)
    layout.check_params("qparams.scale", sinfo.shape)
    layout.check_params("qparams.zero_point", zinfo.shape)
    if info.on_gpu:
        from .backends.array_ops import ops_for

        ops = ops_for(x)
        for name, value, vinfo in (("scale", scale, sinfo), ("zero_point", zero_point, zinfo)):
            if vinfo.device == "cpu":
                host = np.asarray(value.cpu() if vinfo.framework == "torch" else value)
                value = ops.from_host(host, x)
            elif vinfo.device != info.device or vinfo.framework != info.framework:
                raise QuantizationError(f"qparams.{name} is a {vinfo.framework} array on "
                                        f"{vinfo.device}; x is on {info.device}")
            if name == "scale":
                scale = value
            else:
                zero_point = value
    elif sinfo.on_gpu or zinfo.on_gpu:
        raise QuantizationError(f"qparams are on the GPU but x is a {info.framework} array on "
                                "the CPU; gpuquant never moves data between devices")
    scale, zero_point = be.native(scale, sinfo), be.native(zero_point, zinfo)
    if isinstance(scale, np.ndarray):
        scale = scale.astype(np.float32)
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise InvalidCalibrationError("qparams.scale must be finite and positive everywhere")
        zp = np.asarray(zero_point)
        if zp.dtype.kind == "f" and not np.array_equal(zp, np.rint(zp)):
            raise InvalidCalibrationError("qparams.zero_point must hold integers")
        if zp.size and (zp.min() < config.qmin or zp.max() > config.qmax):
            raise InvalidCalibrationError(
                f"qparams.zero_point must lie in [{config.qmin}, {config.qmax}] for "
                f"{config.scheme.value} {'symmetric' if config.symmetric else 'asymmetric'}"
            )
        zero_point = zp.astype(np.int32)
    return scale, zero_point
