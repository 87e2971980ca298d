"""QuantizedTensor: packed codes, their qparams and what is needed to undo them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .config import QuantConfig
from .core.frameworks import (
    FLOAT_DTYPES,
    TensorInfo,
    array_device,
    as_ndarray,
    framework_of,
    output_dtype,
    prepare,
)
from .core.layout import Layout
from .core.nonfinite import compiling, entry
from .core.qparams import check_user_qparams
from .errors import BackendUnavailableError, InvalidDtypeError, InvalidShapeError, QuantizationError
from .formats.parts import check_part_arrays

__all__ = ["QuantizedTensor"]

_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}


def _nbytes(a: Any) -> int:
    if hasattr(a, "nbytes"):
        return int(a.nbytes)
    return int(a.numel() * a.element_size())


class QuantizedTensor:
    """Integer codes (int4 packed two per byte) with float32 scales and int32 zero points.

    The arrays stay in the framework and on the device of the input they came
    from. ``shape`` and ``dtype`` are the original tensor's.
    """

    global_scale: Any = None  # float formats: NVFP4's float32 per-tensor scale (0-d)
    nested_absmax: Any = None  # double-quantized NF4: float32 per 256 absmax codes
    nested_offset: Any = None  # double-quantized NF4: the float32 mean of the absmax (0-d)

    def __init__(self, data: Any, scale: Any, zero_point: Any, shape: tuple[int, ...],
                 dtype: str, config: QuantConfig, info: TensorInfo | None = None,
                 global_scale: Any = None, nested_absmax: Any = None, nested_offset: Any = None):
        """Validate and hold the parts of a quantized tensor.

        Shapes and dtypes are always checked: ``data`` must have the config's
        storage dtype and the packed shape of ``shape``, ``scale`` float32 and
        ``zero_point`` int32 of the unit shape. Values (scales finite, positive
        and normal, zero points in [qmin, qmax]) are checked for arrays on the
        CPU only: a GPU array is never synchronised. Raises a QuantizationError
        subclass naming the argument. A float-format config (``config.is_float``) takes
        ``zero_point=None`` and, for NVFP4, ``global_scale``; for NF4 with double_quant,
        ``scale`` holds the uint8 absmax codes, with ``nested_absmax`` and ``nested_offset``
        (gpuquant.formats.parts).
        """
        if isinstance(config, QuantConfig) and config.is_float:
            extras = dict(global_scale=global_scale, nested_absmax=nested_absmax,
                          nested_offset=nested_offset)
            self._init_float(data, scale, zero_point, shape, dtype, config, info, extras)
            return
        data, scale, zero_point = (_as_array(a, name) for a, name in (
            (data, "data"), (scale, "scale"), (zero_point, "zero_point")))
        shape, dtype, layout, info = check_parts(data, scale, zero_point, shape, dtype, config,
                                                 info)
        self._set(data, scale, zero_point, shape, dtype, config, info, layout)

    def _init_float(self, data, scale, zero_point, shape, dtype, config, info, extras):
        from .formats.parts import check_float_parts

        if zero_point is not None:
            raise QuantizationError(f"zero_point must be None for {config.describe()}: float "
                                    "formats are symmetric")
        data, scale, *rest = (None if a is None else _as_array(a, name) for name, a in
                              (("data", data), ("scale", scale), *extras.items()))
        extras = dict(zip(extras, rest))
        shape = _check_shape(shape)
        dtype, info = check_float_parts(data, scale, extras, shape, dtype, config, info)
        self._set(data, scale, None, shape, dtype, config, info, None)
        self.__dict__.update(extras)

    def _set(self, data, scale, zero_point, shape, dtype, config, info, layout) -> None:
        self.data = data
        self.scale = scale
        self.zero_point = zero_point
        self.shape = shape
        self.dtype = dtype
        self.config = config
        self._info = info
        self.layout = layout
        self._plan = None  # made by gq.quantize: the plan with its dequantize runners

    @classmethod
    def _from_parts(cls, data: Any, scale: Any, zero_point: Any, shape: tuple, dtype: str,
                    config: QuantConfig, info: TensorInfo, layout: Layout) -> QuantizedTensor:
        """gpuquant's own results, without checks (traceable by torch.compile)."""
        qt = cls.__new__(cls)
        qt._set(data, scale, zero_point, shape, dtype, config, info, layout)
        return qt

    @classmethod
    def _from_float(cls, data: Any, scale: Any, extras: dict[str, Any], info: TensorInfo,
                    config: QuantConfig) -> QuantizedTensor:
        """What gq.quantize made under a float-format config (``extras``: name -> array of
        its extra parts, gpuquant.formats.parts.EXTRA_PARTS): no checks."""
        qt = cls.__new__(cls)
        qt._set(data, scale, None, info.shape, info.dtype, config, info, None)
        qt.__dict__.update(extras)
        return qt

    @classmethod
    def _trusted(cls, data: Any, scale: Any, zero_point: Any, plan) -> QuantizedTensor:
        """What gq.quantize made under ``plan`` (gpuquant.core.plan): no checks, no recomputation."""
        qt = cls.__new__(cls)
        qt.data, qt.scale, qt.zero_point = data, scale, zero_point
        qt.shape, qt.dtype, qt.config = plan.info.shape, plan.info.dtype, plan.config
        qt._info, qt.layout, qt._plan = plan.info, plan.layout, plan
        return qt

    # ---------------------------------------------------------------- sizes
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def framework(self) -> str:
        return self._info.framework

    @property
    def device(self) -> str:
        return self._info.device

    @property
    def size_bytes(self) -> int:
        """Bytes of the packed codes plus the scales, zero points and extra parts."""
        parts = (self.data, self.scale, self.zero_point, self.global_scale, self.nested_absmax,
                 self.nested_offset)
        return sum(_nbytes(a) for a in parts if a is not None)

    @property
    def original_bytes(self) -> int:
        return self.numel * _ITEMSIZE[self.dtype]

    @property
    def compression_ratio(self) -> float:
        """Bytes of the original tensor (its own dtype) over :attr:`size_bytes`."""
        return self.original_bytes / self.size_bytes

    # ----------------------------------------------------------- conversion
    @entry
    def dequantize(self, dtype: str | None = None, backend: str | None = None, out: Any = None):
        """float(q - zero_point) * scale, in the original framework and device, saturated to
        the output dtype's finite range (finite inputs never dequantize to inf). An empty
        tensor (gq.quantize refuses them, but a file may hold one) gives an empty array.

        ``dtype`` defaults to the original dtype; "float16", "bfloat16" (torch
        only), "float32" and "float64" are accepted. A NumPy QuantizedTensor
        whose original dtype is bfloat16 (one read by ``gq.load``) returns
        float32 values rounded to bfloat16 by default, NumPy having no bfloat16.
        ``out``: a preallocated contiguous output of the original shape and that
        dtype (a CUDA graph's static buffer, say). A NaN found by an earlier GPU
        call is raised here. Inside ``torch.compile`` this is the
        ``gpuquant::dequantize`` operator (``gpuquant::dequantize_float`` for the float formats).
        """
        if self.config.is_float:
            if compiling():
                from .formats.ops import dequantize as traced_float

                return traced_float(self, dtype, backend, out)
            from .formats.parts import dequantize_parts

            return dequantize_parts(self, dtype, backend, out)
        if compiling():
            from .torch_ops import dequantize as traced

            return traced(self, dtype, backend, out)
        if self.numel == 0:  # a loaded empty tensor: nothing to compute
            return self._dequantize_empty(dtype, backend, out)
        plan = self._plan
        if plan is None or backend not in (None, plan.be.name):
            return self._dequantize_slow(dtype, backend, out)
        runner = plan.dequantizer(output_dtype(dtype, self.dtype, self.framework), self.data)
        return runner(self.data, self.scale, self.zero_point, out)

    def _dequantize_slow(self, dtype, backend, out):
        """Dequantize without a plan of gq.quantize (loaded or constructed tensors)."""
        from .backends import select

        info = prepare(self.data, "data", require_float=False)[1]
        be = select(info, backend)
        out_dtype = output_dtype(dtype, self.dtype, self.framework)
        runner = be.plan_dequantize(self.layout, self.config, self.data, out_dtype)
        return runner(self.data, self.scale, self.zero_point, out)

    def _dequantize_empty(self, dtype, backend, out):
        """The empty array of the original shape (gq.quantize refuses empty tensors, but a
        file may hold one): in the output dtype, framework and device, or ``out``."""
        from .backends import BACKENDS
        from .backends.array_ops import ops_for
        from .core.plan import copy_into

        if backend is not None and (not isinstance(backend, str) or backend not in BACKENDS):
            raise BackendUnavailableError(f"backend={backend!r} is unknown; accepted: "
                                          f"{', '.join(BACKENDS)} or None")
        name = output_dtype(dtype, self.dtype, self.framework)
        if name == "bfloat16" and self.framework == "numpy":
            name = "float32"  # NumPy has no bfloat16 (see dequantize)
        y = ops_for(self.data).empty(self.shape, name, self.data)
        return y if out is None else copy_into((out,), (y,))[0]

    def check_finite(self) -> None:
        """Wait for the NaN/Inf checks of GPU quantize calls still in flight; raise
        NonFiniteError if one found any (see gpuquant.core.nonfinite). Free on the CPU."""
        from .core.nonfinite import wait_all

        wait_all()

    def quantization_error(self, x: Any) -> float:
        """Mean squared error between ``x`` and the dequantized tensor, in float64."""
        from .metrics import mse

        return mse(x, self.dequantize(dtype="float32"))

    def __repr__(self) -> str:
        cfg = self.config
        if cfg.is_float:
            return (f"QuantizedTensor(shape={self.shape}, dtype={self.dtype}, format={cfg.describe()}, "
                    f"data=uint8{tuple(self.data.shape)}, size_bytes={self.size_bytes}, "
                    f"compression_ratio={self.compression_ratio:.2f}, framework={self.framework}, "
                    f"device={self.device})")
        gran = cfg.granularity.value
        if cfg.granularity.value == "group":
            gran += f"({cfg.group_size})"
        elif gran == "channel":
            gran += f"(axis={self.layout.axis})"
        return (f"QuantizedTensor(shape={self.shape}, dtype={self.dtype}, scheme={cfg.scheme.value}, "
                f"granularity={gran}, symmetric={cfg.symmetric}, "
                f"data={self.config.storage_dtype}{tuple(self.data.shape)}, "
                f"size_bytes={self.size_bytes}, compression_ratio={self.compression_ratio:.2f}, "
                f"framework={self.framework}, device={self.device})")


# ------------------------------------------------------------- validation
def _as_array(a: Any, name: str) -> Any:
    if framework_of(a) == "numpy" and type(a) is not np.ndarray:
        return as_ndarray(a, name)
    return a


def _check_shape(shape: Any) -> tuple[int, ...]:
    try:
        dims = tuple(shape)
    except TypeError:
        dims = None
    if dims is None or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool)
                               and d >= 0 for d in dims):
        raise InvalidShapeError(f"shape={shape!r} must be a tuple of non-negative integers")
    return tuple(int(d) for d in dims)


def check_parts(data, scale, zero_point, shape, dtype, config, info):
    """(shape, dtype, layout, info) of valid parts; see QuantizedTensor.__init__."""
    if not isinstance(config, QuantConfig):
        raise QuantizationError(f"config must be a gq.QuantConfig, got {type(config).__name__}")
    shape = _check_shape(shape)
    if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:
        raise InvalidDtypeError(f"dtype={dtype!r} is not an original dtype; accepted: "
                                + ", ".join(FLOAT_DTYPES))
    if info is not None and not isinstance(info, TensorInfo):
        raise QuantizationError(f"info must be a TensorInfo or None, got {type(info).__name__}")
    layout = Layout.of(shape, config)
    framework, device = framework_of(data), array_device(data)
    wanted = {"data": (data, config.storage_dtype, layout.packed_shape(config.bits)),
              "scale": (scale, "float32", layout.unit_shape),
              "zero_point": (zero_point, "int32", layout.unit_shape)}
    check_part_arrays(wanted, framework, device, shape, config)
    if device == "cpu":
        _check_values(_host(scale), _host(zero_point), config)
    if info is not None and (info.framework, info.device) != (framework, device):
        raise QuantizationError(f"info says {info.framework} on {info.device} but the arrays "
                                f"are {framework} on {device}")
    info = info or TensorInfo(framework, dtype, shape, device)
    return shape, dtype, layout, info


def _host(a: Any) -> np.ndarray:
    return a.detach().resolve_neg().numpy() if framework_of(a) == "torch" else np.asarray(a)


def _check_values(scale: np.ndarray, zero_point: np.ndarray, config: QuantConfig) -> None:
    check_user_qparams(scale, zero_point, config.qmin, config.qmax, prefix="")
