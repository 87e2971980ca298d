"""gq.quantize: calibrate (unless qparams are given), quantize and pack."""

from __future__ import annotations

from typing import Any

from .config import QuantConfig
from .core.nonfinite import compiling, entry
from .core.plan import plan_for
from .tensor import QuantizedTensor

__all__ = ["quantize"]


@entry
def quantize(x: Any, config: QuantConfig | None = None, qparams: Any = None,
             backend: str | None = None, out: tuple | None = None) -> QuantizedTensor:
    """Quantize ``x`` (NumPy, CuPy or torch) under ``config``.

    Args:
        x: a floating tensor: float16, float32, float64, or torch bfloat16.
        config: defaults to ``QuantConfig()`` (int8, per tensor, symmetric).
        qparams: a :class:`QParams` (or a (scale, zero_point) pair) to use
            instead of calibrating; shaped per unit as :func:`calibrate` returns.
        backend: None picks by where ``x`` lives; "numpy" or "triton" force one.
        out: preallocated ``(codes, scale, zero_point)`` to write into (only codes
            with ``qparams``): contiguous, of the result's shapes, dtypes and device,
            e.g. static buffers of a captured CUDA graph. Not for the float formats
            (their operator ``gpuquant::quantize_float_out`` takes buffers).

    Returns:
        A :class:`QuantizedTensor` whose arrays are in ``x``'s framework and device.

    On a GPU the call does not wait for the device: NaN/Inf in the data are
    raised by the next gpuquant call, or by ``qt.check_finite()``.

    Inside ``torch.compile`` a torch tensor goes through the ``torch.ops.gpuquant``
    operators (gpuquant.torch_ops; the float formats': gpuquant.formats.ops): min/max
    calibration and given integer qparams trace into the graph, other calibrations and
    given FP8 scales run eagerly (a graph break).
    """
    if config is not None and getattr(config, "is_float", False):
        return _quantize_float(x, config, qparams, backend, out)
    if compiling():
        from .torch_ops import eager, quantize_parts

        parts = quantize_parts(x, config, qparams, backend, out)
        if parts is None:
            return eager(quantize, x, config, qparams, backend, out)
        return QuantizedTensor._from_parts(*parts)
    plan, x = plan_for(x, config, backend)
    if qparams is None:
        codes, scale, zero_point = plan.calibrated(x, out)
    else:
        codes, scale, zero_point = plan.given(x, qparams, out)
    return QuantizedTensor._trusted(codes, scale, zero_point, plan)


def _quantize_float(x, config, qparams, backend, out) -> QuantizedTensor:
    """The float formats (gpuquant.formats.parts): scales from the data, or given FP8 scales;
    while torch.compile traces, the ``gpuquant::quantize_float`` operators (formats/ops.py)."""
    from .errors import UnsupportedSchemeError

    if compiling():
        from .formats.ops import quantize_parts as traced
        from .torch_ops import eager

        parts = traced(x, config, qparams, backend, out)
        if parts is None:
            return eager(quantize, x, config, qparams, backend, out)
        return QuantizedTensor._from_float(*parts, config)
    from .formats.parts import quantize_parts

    if out is not None:  # the operators take buffers (formats/ops.py): quantize_float_out
        raise UnsupportedSchemeError(f"out= is not supported for {config.describe()}")
    if qparams is None and config.calibration != "minmax":
        raise UnsupportedSchemeError(
            f"calibration={config.calibration} chooses static FP8 scales: feed batches to "
            "gq.Calibrator(config) and pass qparams=calibrator.qparams()")
    codes, scale, extras, info = quantize_parts(x, config, backend, qparams)
    return QuantizedTensor._from_float(codes, scale, extras, info, config)
