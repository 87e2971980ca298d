"""gpuquant's hot operations as torch operators, for torch.compile and CUDA graphs.

Importing this module (which needs torch) registers, in the ``gpuquant``
namespace of ``torch.ops``, eight operators, each declared once from a typed
Python function with ``torch.library.custom_op`` (the schema is inferred from
its annotations; ``*_out`` declare the buffers they write in ``mutates_args``):

==========================  ==================================================
``quantize_minmax``         min/max calibration + quantize, every granularity
``quantize_per_token``      the same per row (dynamic per-token activations)
``quantize_given``          quantize with a given scale and zero point
``dequantize``              codes -> floats of ``dtype``
``*_out``                   the same, writing caller buffers (``Tensor(a!)``)
==========================  ==================================================

A config goes in as plain values (``bits, symmetric, granularity, axis,
group_size, high_first, half_range`` (its scale_rule) and, where calibration can meet
NaN/Inf, ``ignore_nonfinite``; the per-token operators take the max rule only);
:func:`config_args` makes them, :func:`config_of` turns them back into a cached
:class:`QuantConfig`. ``granularity`` is the
index into :data:`GRANULARITIES`.

Each operator has a CPU kernel (the NumPy reference, also for torch CPU
tensors under ``TRITON_INTERPRET=1``: it is bit-identical and far faster than
the interpreter), a CUDA kernel (the Triton launch plans) and a fake kernel
(shapes and dtypes from gpuquant.core.layout, symbolic sizes kept), all through
gpuquant.core.plan. They are ``torch.library.custom_op`` operators, opaque to
Inductor, rather than ``triton_op``: a launch plan makes host decisions once
per input class, launches kernels with constexpr specialisations and a
host-mapped non-finite board that is no operator input, and the CPU kernel is
NumPy; none of that is a traceable Triton call.

The float formats' operators (``quantize_float``, ``dequantize_float`` and their ``_out``)
are declared the same way in gpuquant.formats.ops.

gq.quantize, QuantizedTensor.dequantize and DynamicQuantizer call
:func:`quantize` and :func:`dequantize` below only while torch.compile traces
them (``torch.compiler.is_compiling()``); eager calls take the launch plans
directly, which costs less host time. Both give the same bits.
"""

from __future__ import annotations

import functools

import torch

from .backends import select_for
from .config import QuantConfig
from .core.frameworks import FLOAT_DTYPES, TensorInfo, output_dtype
from .core.layout import Layout
from .core.nonfinite import raise_ready
from .core.plan import DEFAULT_CONFIG, MAX_PLANS, plan_for
from .errors import InvalidDtypeError, QuantizationError

__all__ = ["GRANULARITIES", "config_args", "config_of", "quantize_parts", "dequantize",
           "eager", "torch_info"]

GRANULARITIES = ("tensor", "channel", "group", "token")  # the operators' granularity codes
BACKENDS = {"cpu": "numpy", "cuda": "triton"}  # the kernel of each device type
DEVICES = tuple(BACKENDS)
Tensor = torch.Tensor
Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (codes, scale, zero_point)
OUTS = ("codes", "scale", "zero_point")


# ------------------------------------------------------------------ configs
def config_args(config: QuantConfig) -> tuple:
    """(bits, symmetric, granularity, axis, group_size, high_first, half_range) of ``config``."""
    return (config.bits, config.symmetric, GRANULARITIES.index(config.granularity.value),
            config.axis, config.group_size or 0, config.nibble_order == "high_first",
            config.scale_rule == "half_range")


@functools.lru_cache(maxsize=512)
def config_of(bits: int, symmetric: bool, granularity: int, axis: int, group_size: int,
              high_first: bool, half_range: bool = False,
              ignore_nonfinite: bool = False) -> QuantConfig:
    """The QuantConfig of an operator's plain arguments (min/max calibration)."""
    gran = GRANULARITIES[granularity]
    return QuantConfig(scheme=bits, symmetric=symmetric, granularity=gran, axis=axis,
                       group_size=group_size if gran == "group" else None,
                       nibble_order="high_first" if high_first else "low_first",
                       ignore_nonfinite=ignore_nonfinite,
                       scale_rule="half_range" if half_range else "max")


def _token_config(bits, symmetric, high_first, ignore_nonfinite) -> QuantConfig:
    return config_of(bits, symmetric, 3, 0, 0, high_first, False, ignore_nonfinite)


def _layout(x, config: QuantConfig) -> Layout:
    name = str(x.dtype)[6:]
    if name not in FLOAT_DTYPES:
        raise InvalidDtypeError(f"x has dtype {name}; accepted: " + ", ".join(FLOAT_DTYPES))
    return Layout.of(x.shape, config)


def _check_qparams(layout: Layout, scale, zero_point) -> None:
    for name, value, dtype in (("scale", scale, torch.float32),
                               ("zero_point", zero_point, torch.int32)):
        layout.check_params(name, tuple(value.shape))
        if value.dtype != dtype:
            raise InvalidDtypeError(f"{name} has dtype {value.dtype}; the operator takes {dtype}")


# ------------------------------------------------------------------ kernels
def _calibrated(x, config: QuantConfig, out=None):
    raise_ready()  # what earlier GPU calls (compiled or eager) found
    plan, x = plan_for(x, config, BACKENDS[x.device.type])
    return plan.calibrated(x, out)


def _given(x, scale, zero_point, config: QuantConfig, out=None):
    raise_ready()
    plan, x = plan_for(x, config, BACKENDS[x.device.type])
    _check_qparams(plan.layout, scale, zero_point)
    return plan.given(x, (scale, zero_point), out)[0]


_dequantizers: dict = {}  # (shape, config, dtype, backend) -> dequantize runner


def _dequantize(codes, scale, zero_point, shape, dtype, config, out=None):
    raise_ready()
    name, backend = str(dtype)[6:], BACKENDS[codes.device.type]
    key = (tuple(shape), config, name, backend)
    runner = _dequantizers.get(key)
    layout = Layout.of(key[0], config)
    _check_qparams(layout, scale, zero_point)
    if runner is None:
        runner = select_for(codes, backend).plan_dequantize(layout, config, codes, name)
        if len(_dequantizers) >= MAX_PLANS:  # as gpuquant.core.plan does with its plans
            _dequantizers.clear()
        _dequantizers[key] = runner
    return runner(codes, scale, zero_point, out)  # the runner checks out's shape, dtype, device


# ---------------------------------------------------------------- operators
# Each is declared once from its typed signature (torch.library.custom_op infers the schema);
# device_types registers the body as the kernel of the CPU (the NumPy reference) and of CUDA
# (the Triton launch plans); register_fake gives shapes and dtypes without running anything.
def _op(name: str, mutates: tuple[str, ...] = ()):
    return torch.library.custom_op(f"gpuquant::{name}", mutates_args=mutates, device_types=DEVICES)


@_op("quantize_minmax")
def quantize_minmax(x: Tensor, bits: int, symmetric: bool, granularity: int, axis: int,
                    group_size: int, high_first: bool, half_range: bool,
                    ignore_nonfinite: bool) -> Outputs:
    """Min/max calibration + quantize, every granularity: (codes, scale, zero_point)."""
    return _calibrated(x, config_of(bits, symmetric, granularity, axis, group_size, high_first,
                                    half_range, ignore_nonfinite))


@_op("quantize_minmax_out", OUTS)
def quantize_minmax_out(x: Tensor, bits: int, symmetric: bool, granularity: int, axis: int,
                        group_size: int, high_first: bool, half_range: bool,
                        ignore_nonfinite: bool, codes: Tensor, scale: Tensor,
                        zero_point: Tensor) -> None:
    """quantize_minmax into the caller's buffers."""
    _calibrated(x, config_of(bits, symmetric, granularity, axis, group_size, high_first,
                             half_range, ignore_nonfinite), (codes, scale, zero_point))


@_op("quantize_per_token")
def quantize_per_token(x: Tensor, bits: int, symmetric: bool, high_first: bool,
                       ignore_nonfinite: bool) -> Outputs:
    """Min/max calibration + quantize per row (dynamic per-token activations)."""
    return _calibrated(x, _token_config(bits, symmetric, high_first, ignore_nonfinite))


@_op("quantize_per_token_out", OUTS)
def quantize_per_token_out(x: Tensor, bits: int, symmetric: bool, high_first: bool,
                           ignore_nonfinite: bool, codes: Tensor, scale: Tensor,
                           zero_point: Tensor) -> None:
    """quantize_per_token into the caller's buffers."""
    _calibrated(x, _token_config(bits, symmetric, high_first, ignore_nonfinite),
                (codes, scale, zero_point))


@_op("quantize_given")
def quantize_given(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, symmetric: bool,
                   granularity: int, axis: int, group_size: int, high_first: bool,
                   half_range: bool) -> Tensor:
    """Codes of x with a given float32 scale and int32 zero point."""
    return _given(x, scale, zero_point,
                  config_of(bits, symmetric, granularity, axis, group_size, high_first, half_range))


@_op("quantize_given_out", ("codes",))
def quantize_given_out(x: Tensor, scale: Tensor, zero_point: Tensor, bits: int, symmetric: bool,
                       granularity: int, axis: int, group_size: int, high_first: bool,
                       half_range: bool, codes: Tensor) -> None:
    """quantize_given into the caller's codes buffer."""
    _given(x, scale, zero_point, config_of(bits, symmetric, granularity, axis, group_size,
                                           high_first, half_range), codes)


@_op("dequantize")
def dequantize_op(codes: Tensor, scale: Tensor, zero_point: Tensor, shape: list[int],
                  dtype: torch.dtype, bits: int, symmetric: bool, granularity: int, axis: int,
                  group_size: int, high_first: bool, half_range: bool) -> Tensor:
    """Codes -> floats of ``dtype``, shaped ``shape``."""
    return _dequantize(codes, scale, zero_point, shape, dtype,
                       config_of(bits, symmetric, granularity, axis, group_size, high_first,
                                 half_range))


@_op("dequantize_out", ("out",))
def dequantize_out(codes: Tensor, scale: Tensor, zero_point: Tensor, shape: list[int],
                   dtype: torch.dtype, bits: int, symmetric: bool, granularity: int, axis: int,
                   group_size: int, high_first: bool, half_range: bool, out: Tensor) -> None:
    """dequantize into the caller's buffer."""
    _dequantize(codes, scale, zero_point, shape, dtype,
                config_of(bits, symmetric, granularity, axis, group_size, high_first,
                          half_range), out)


# --------------------------------------------------------------------- fakes
def _fake_outputs(x, config: QuantConfig):
    layout = _layout(x, config)
    storage = getattr(torch, config.storage_dtype)
    return (x.new_empty(layout.packed_shape(config.bits), dtype=storage),
            x.new_empty(layout.unit_shape, dtype=torch.float32),
            x.new_empty(layout.unit_shape, dtype=torch.int32))


@quantize_minmax.register_fake
def _(x, *cfg):
    return _fake_outputs(x, config_of(*cfg))


@quantize_per_token.register_fake
def _(x, *cfg):
    return _fake_outputs(x, _token_config(*cfg))


@quantize_given.register_fake
def _(x, scale, zero_point, *cfg):
    config = config_of(*cfg)
    _check_qparams(_layout(x, config), scale, zero_point)
    return _fake_outputs(x, config)[0]


@dequantize_op.register_fake
def _(codes, scale, zero_point, shape, dtype, *cfg):
    _check_qparams(Layout.of(shape, config_of(*cfg)), scale, zero_point)
    return codes.new_empty(shape, dtype=dtype)


def _writes_its_buffers(*args) -> None:
    """The fake of an ``_out`` operator: it returns nothing."""


for _mutating in (quantize_minmax_out, quantize_per_token_out, quantize_given_out, dequantize_out):
    _mutating.register_fake(_writes_its_buffers)


# ----------------------------------------------- the public API, when traced
def _traceable(x, config, qparams, backend) -> bool:
    """True for what the operators do; bad arguments are left to the eager call, which
    raises the gq error (an error raised while tracing would not reach the caller as it is)."""
    if not (isinstance(x, torch.Tensor) and isinstance(config, QuantConfig)
            and isinstance(config.calibration, str) and config.calibration == "minmax"
            and backend in (None, BACKENDS.get(x.device.type))
            and str(x.dtype)[6:] in FLOAT_DTYPES
            and not (config.granularity.value == "token" and config.scale_rule == "half_range")):
        return False  # the per-token operators take the max rule only
    try:
        layout = Layout.of(x.shape, config)
        if qparams is not None:
            scale, zero_point = qparams
            if not all(isinstance(p, torch.Tensor) and p.device == x.device
                       for p in (scale, zero_point)):
                return False  # host qparams (a Calibrator's) are copied by the eager call
            layout.check_params("scale", tuple(scale.shape))
            layout.check_params("zero_point", tuple(zero_point.shape))
    except (QuantizationError, TypeError, ValueError, AttributeError):
        return False
    return True


def eager(fn, *args):
    """``fn(*args)`` run outside the graph being traced (a graph break)."""
    return torch.compiler.disable(fn)(*args)


def quantize_parts(x, config, qparams, backend, out):
    """gq.quantize while torch.compile traces: the operators' results as the parts of a
    QuantizedTensor (``QuantizedTensor._from_parts``), or None where the call is not
    traceable: min/max calibration (or given torch qparams) on torch tensors with the
    device's default backend is traced; anything else runs eagerly, outside the graph.
    """
    config = DEFAULT_CONFIG if config is None else config
    if not _traceable(x, config, qparams, backend):
        return None
    ops, args = torch.ops.gpuquant, config_args(config)
    if qparams is not None:
        scale, zero_point = qparams
        scale, zero_point = scale.to(torch.float32), zero_point.to(torch.int32)
        if out is None:
            codes = ops.quantize_given(x, scale, zero_point, *args)
        else:
            ops.quantize_given_out(x, scale, zero_point, *args, out)
            codes = out
    else:
        ignore = config.ignore_nonfinite
        token = config.granularity.value == "token"
        per_token = (args[0], args[1], args[5], ignore)
        if out is None:
            op = ops.quantize_per_token if token else ops.quantize_minmax
            codes, scale, zero_point = op(x, *per_token) if token else op(x, *args, ignore)
        elif token:
            ops.quantize_per_token_out(x, *per_token, *out)
            codes, scale, zero_point = out
        else:
            ops.quantize_minmax_out(x, *args, ignore, *out)
            codes, scale, zero_point = out
    info = torch_info(x.device, str(x.dtype)[6:], tuple(x.shape))
    return codes, scale, zero_point, info.shape, info.dtype, config, info, Layout.of(info.shape,
                                                                                     config)


def torch_info(device, dtype: str, shape: tuple) -> TensorInfo:
    """The TensorInfo of a torch tensor of ``dtype`` (a name) and ``shape`` on ``device``."""
    return TensorInfo("torch", dtype, shape, "cpu" if device.type == "cpu" else str(device))


def dequantize(qt, dtype, backend, out):
    """QuantizedTensor.dequantize while torch.compile traces: the dequantize operator."""
    data = qt.data
    if not isinstance(data, torch.Tensor) or backend not in (None, BACKENDS.get(data.device.type)):
        return eager(type(qt).dequantize, qt, dtype, backend, out)
    try:
        dtype = output_dtype(dtype, qt.dtype, qt.framework)
    except QuantizationError:
        return eager(type(qt).dequantize, qt, dtype, backend, out)  # raises it, outside the graph
    args = config_args(qt.config)
    if out is None:
        return torch.ops.gpuquant.dequantize(data, qt.scale, qt.zero_point, list(qt.shape),
                                             getattr(torch, dtype), *args)
    torch.ops.gpuquant.dequantize_out(data, qt.scale, qt.zero_point, list(qt.shape),
                                      getattr(torch, dtype), *args, out)
    return out
