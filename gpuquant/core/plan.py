"""Launch plans: what a call decides once per input class, cached.

A plan is keyed by the input's framework type, shape, strides, dtype and
device, the config and the backend name. Building one validates the config
against the shape (gpuquant.core.layout), selects the backend and asks it for its
runners; a repeated call then only allocates, launches and returns (about 20
Python function calls: ``python -m bench --host-overhead`` counts them).

- ``plan.calibrated(x, out)``: calibrate (the config's method) + quantize;
- ``plan.given(x, qparams, out)``: quantize with the caller's qparams;
- ``plan.dequantizer(dtype, backend)``: the dequantize runner of the codes
  this plan makes, per output dtype.
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

import numpy as np

from ..backends import select
from ..calibration.dispatch import calibration_range
from ..config import QuantConfig
from ..errors import InvalidShapeError, QuantizationError
from .frameworks import TensorInfo, framework_of, host_copy, prepare
from .layout import Layout
from .out_buffers import copy_into
from .qparams import QParams, check_user_qparams

__all__ = ["plan_for", "QuantizePlan", "clear", "DEFAULT_CONFIG"]

DEFAULT_CONFIG = QuantConfig()
MAX_PLANS = 1024  # distinct input classes kept; the cache is cleared when full
_plans: dict[tuple, QuantizePlan] = {}
_lock = threading.Lock()


def _torch_key(x):
    return x.shape, x.stride(), x.dtype, x.device, x.layout


def _numpy_key(x):
    return x.shape, x.strides, x.dtype


def _cupy_key(x):
    return x.shape, x.strides, x.dtype, x.device.id


_KEYS: dict[type, Any] = {np.ndarray: _numpy_key}
_KEY_OF_FRAMEWORK = {"torch": _torch_key, "cupy": _cupy_key}


def clear() -> None:
    """Forget every plan (the tuning sweep does this after changing launch parameters)."""
    with _lock:
        _plans.clear()


def plan_for(x, config: QuantConfig | None, backend: str | None) -> tuple[QuantizePlan, Any]:
    """(the cached plan of ``x``'s class under ``config``, x as an array): lists and
    scalars become NumPy arrays; a new class of input builds its plan first."""
    config = DEFAULT_CONFIG if config is None else config
    keyf = _KEYS.get(type(x))
    if keyf is None:
        x = prepare(x)[0]  # lists and scalars -> NumPy; validates the input
        keyf = _KEYS.setdefault(type(x), _KEY_OF_FRAMEWORK.get(framework_of(x), _numpy_key))
    key = (type(x), keyf(x), config, backend)
    try:
        return _plans[key], x
    except KeyError:
        plan = QuantizePlan(x, config, backend)
    except TypeError:  # an unhashable config: QuantizePlan says what is wrong
        return QuantizePlan(x, config, backend), x
    with _lock:
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        _plans[key] = plan
    return plan, x


class QuantizePlan:
    """Layout, backend and runners of one input class under one config."""

    def __init__(self, x, config: QuantConfig, backend: str | None):
        if not isinstance(config, QuantConfig):
            raise QuantizationError(f"config must be a gq.QuantConfig, got {type(config).__name__}")
        x, info = prepare(x)
        self.config, self.info = config, info
        self.layout = Layout.of(info.shape, config)
        self.be = select(info, backend)
        self.stored = TensorInfo(info.framework, config.storage_dtype,
                                 self.layout.packed_shape(config.bits), info.device)
        self._dequantizers: dict = {}
        self._given = None
        _warn_if_larger(self.layout, config, info)
        if config.calibration == "minmax":
            self.calibrated = self.be.plan_quantize(self.layout, config, x)
        else:
            self.calibrated = self._calibrate_then_quantize

    def _calibrate_then_quantize(self, x, out=None):
        layout, config, be = self.layout, self.config, self.be
        lo, hi = calibration_range(be, be.native(x, self.info).reshape(layout.rows, layout.cols),
                                   layout, config, defer=True)
        scale, zero_point = (be.wrap(a.reshape(layout.unit_shape), self.stored)
                             for a in be.qparams(lo, hi, config))
        if out is None:
            return self.given_codes(x, scale, zero_point), scale, zero_point
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise InvalidShapeError("out= takes 3 buffers: (codes, scale, zero_point)")
        codes = self.given_codes(x, scale, zero_point, out[0])
        return (codes, *copy_into(out[1:], (scale, zero_point)))

    def given_codes(self, x, scale, zero_point, out=None):
        if self._given is None:
            self._given = self.be.plan_quantize_given(self.layout, self.config, x)
        return self._given(x, scale, zero_point, out)

    def given(self, x, qparams: Any, out=None):
        """(codes, scale, zero point) with the caller's qparams (validated here)."""
        scale, zero_point = user_qparams(qparams, self, x)
        return self.given_codes(x, scale, zero_point, out), scale, zero_point

    def dequantizer(self, out_dtype: str, data):
        """The runner writing ``out_dtype`` from this plan's codes (cached per dtype)."""
        runner = self._dequantizers.get(out_dtype)
        if runner is None:
            runner = self.be.plan_dequantize(self.layout, self.config, data, out_dtype)
            self._dequantizers[out_dtype] = runner
        return runner


_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1,
             "int16": 2, "uint16": 2}


def _warn_if_larger(layout: Layout, config: QuantConfig, info: TensorInfo) -> None:
    """Warn (once per input class) when the codes and qparams outweigh the input."""
    stored = math.prod(layout.packed_shape(config.bits)) * _ITEMSIZE[config.storage_dtype] + \
        8 * layout.num_units
    original = math.prod(info.shape) * _ITEMSIZE[info.dtype]
    if stored > original:
        warnings.warn(f"quantizing a {info.dtype} tensor of shape {info.shape} with "
                      f"{config.describe()} stores {stored} bytes, more than its {original}: "
                      "use a coarser granularity, or keep it unquantized", UserWarning,
                      stacklevel=4)


def user_qparams(qparams: Any, plan: QuantizePlan, x) -> tuple[Any, Any]:
    """The caller's qparams, checked against the plan: shapes always; values when they are
    on the host. Host qparams for data on a GPU (a Calibrator's, say) are copied there;
    GPU qparams for CPU data are refused."""
    if isinstance(qparams, QParams):
        scale, zero_point = qparams.scale, qparams.zero_point
    else:
        try:
            scale, zero_point = qparams
        except (TypeError, ValueError):
            raise QuantizationError(
                "qparams must be a gq.QParams or a (scale, zero_point) pair") from None
    info, layout, config = plan.info, plan.layout, plan.config
    scale, sinfo = prepare(scale, "qparams.scale", require_float=False)
    zero_point, zinfo = prepare(zero_point, "qparams.zero_point", require_float=False)
    layout.check_params("qparams.scale", sinfo.shape)
    layout.check_params("qparams.zero_point", zinfo.shape)
    if sinfo.on_gpu or zinfo.on_gpu:
        if not info.on_gpu:
            raise QuantizationError(f"qparams are on the GPU but x is a {info.framework} array "
                                    "on the CPU; gpuquant never moves data between devices")
        for name, vinfo in (("scale", sinfo), ("zero_point", zinfo)):
            if vinfo.on_gpu and (vinfo.device != info.device or vinfo.framework != info.framework):
                raise QuantizationError(f"qparams.{name} is a {vinfo.framework} array on "
                                        f"{vinfo.device}; x is on {info.device}")
    from ..backends.array_ops import ops_for

    ops = ops_for(x)
    host = [None if v.on_gpu else host_copy(a)
            for a, v in ((scale, sinfo), (zero_point, zinfo))]
    if host[0] is not None or host[1] is not None:  # values on the host are checked here
        checked = check_user_qparams(
            np.ones(layout.unit_shape, np.float32) if host[0] is None else host[0],
            np.zeros(layout.unit_shape, np.int32) if host[1] is None else host[1],
            config.qmin, config.qmax)
        host = [None if h is None else c for h, c in zip(host, checked)]
    out = []
    for value, on_host, dtype in ((scale, host[0], "float32"), (zero_point, host[1], "int32")):
        if on_host is None:
            out.append(ops.astype(value, dtype))  # on the GPU: unchecked, a check would wait
        elif info.framework == "numpy":
            out.append(on_host)
        else:
            out.append(ops.from_host(on_host, x))
    return out[0], out[1]
