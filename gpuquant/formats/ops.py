"""The float formats' torch operators (FP8, MXFP8, MXFP4, NVFP4, NF4), for torch.compile and
CUDA graphs: the float counterparts of gpuquant.torch_ops, declared the same way.

Importing this module (which needs torch) registers, in ``torch.ops.gpuquant``:

===========================  =================================================
``quantize_float``           scales from the data + codes: (codes, scale, global_scale)
``dequantize_float``         codes -> floats of ``dtype``
``*_out``                    the same, writing caller buffers (``Tensor(a!)``)
``dynamic_fp8``              vLLM's dynamic FP8 e4m3 activations: (codes, scale)
===========================  =================================================

A float config goes in as nine ints (:func:`config_args`; :func:`config_of` turns them
back): ``element`` (index into FLOAT_ELEMENTS), ``granularity`` (into GRANULARITIES),
``axis``, ``group_size`` (0 unless per group), ``scale_format`` (into SCALE_FORMATS),
``block_n, block_k`` (0 unless 2-D blocks), ``scale_rule`` (into SCALE_RULES, MX only) and
``convention`` (into GLOBAL_SCALE_CONVENTIONS, NVFP4 only). ``global_scale`` is the float32
0-d global scale of NVFP4; the other formats return an empty (0,) tensor there and take
None (``Optional[Tensor]``) where it is an argument.

The CPU kernel is the NumPy reference and the CUDA kernel the Triton float kernels, both
through gpuquant.formats.parts (the dispatch of gq.quantize and qt.dequantize), so an
operator gives the bits of the eager call; nothing copies to the host. gq.quantize and
QuantizedTensor.dequantize call :func:`quantize_parts` and :func:`dequantize` below while
torch.compile traces them.
"""

from __future__ import annotations

import functools

import torch

from ..config import QuantConfig
from ..core.frameworks import FLOAT_DTYPES, array_device, output_dtype
from ..core.nonfinite import raise_ready
from ..core.out_buffers import copy_into
from ..errors import InvalidDtypeError, QuantizationError
from ..torch_ops import BACKENDS, DEVICES, eager, torch_info
from .parts import check_part_arrays, dequantize_arrays, dynamic_fp8_parts, expected_parts
from .parts import quantize_parts as _parts
from .schemes import FLOAT_ELEMENTS, GLOBAL_SCALE_CONVENTIONS, SCALE_FORMATS, SCALE_RULES

__all__ = ["GRANULARITIES", "config_args", "config_of", "quantize_parts", "dequantize",
           "dynamic_config"]

GRANULARITIES = ("tensor", "channel", "group", "token", "block")  # the operators' codes
Tensor = torch.Tensor
OptTensor = Tensor | None
Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (codes, scale, global_scale)


# ------------------------------------------------------------------ configs
def config_args(config: QuantConfig) -> tuple:
    """(element, granularity, axis, group_size, scale_format, block_n, block_k, scale_rule,
    convention) of a float-format ``config``, all ints."""
    block_n, block_k = config.block_shape or (0, 0)
    rule, convention = config.scale_rule, config.global_scale_convention
    return (FLOAT_ELEMENTS.index(config.element),
            GRANULARITIES.index(config.granularity.value), config.axis, config.group_size or 0,
            SCALE_FORMATS.index(config.scale_format), block_n, block_k,
            SCALE_RULES.index(rule) if rule else 0,
            GLOBAL_SCALE_CONVENTIONS.index(convention) if convention else 0)


@functools.lru_cache(maxsize=512)
def config_of(element: int, granularity: int, axis: int, group_size: int, scale_format: int,
              block_n: int, block_k: int, scale_rule: int, convention: int) -> QuantConfig:
    """The float QuantConfig of an operator's plain arguments."""
    gran, fmt = GRANULARITIES[granularity], SCALE_FORMATS[scale_format]
    return QuantConfig(scheme=FLOAT_ELEMENTS[element], granularity=gran, axis=axis,
                       group_size=group_size if gran == "group" else None, scale_format=fmt,
                       block_shape=(block_n, block_k) if gran == "block" else None,
                       scale_rule=SCALE_RULES[scale_rule] if fmt == "e8m0" else None,
                       global_scale_convention=GLOBAL_SCALE_CONVENTIONS[convention]
                       if fmt == "e4m3" else None)


def _check_x(x, config: QuantConfig) -> dict:
    """The parts' (dtype name, shape) of x under config; raises on a bad dtype or shape."""
    name = str(x.dtype)[6:]
    if name not in FLOAT_DTYPES:
        raise InvalidDtypeError(f"x has dtype {name}; accepted: " + ", ".join(FLOAT_DTYPES))
    return expected_parts(tuple(x.shape), config)


def _check_parts(codes, scale, global_scale, shape, config: QuantConfig, dtype) -> None:
    wanted = expected_parts(tuple(shape), config)
    values = {"data": codes, "scale": scale, "global_scale": global_scale}
    if global_scale is not None and "global_scale" not in wanted:
        raise QuantizationError(f"global_scale is given but {config.describe()} has none "
                                "(only NVFP4 has one): pass None")
    check_part_arrays({k: (values[k], *want) for k, want in wanted.items()}, "torch",
                      array_device(codes), tuple(shape), config)
    if str(dtype)[6:] not in FLOAT_DTYPES:
        raise InvalidDtypeError(f"dtype={dtype} is not an output dtype; accepted: "
                                + ", ".join(FLOAT_DTYPES))


# ------------------------------------------------------------------ kernels
def _quantize(x, config: QuantConfig, out=None):
    raise_ready()  # what earlier GPU calls (compiled or eager) found
    codes, scale, extras, _ = _parts(x, config, BACKENDS[x.device.type])
    global_scale = extras.get("global_scale")
    if out is None:
        if global_scale is None:
            global_scale = torch.empty((0,), dtype=torch.float32, device=x.device)
        return codes, scale, global_scale
    results = (codes, scale) if global_scale is None else (codes, scale, global_scale)
    if (global_scale is None) != (out[2] is None):
        raise QuantizationError(f"global_scale is {'not ' * (out[2] is not None)}None, but "
                                f"{config.describe()} writes "
                                + ("a float32 0-d global scale" if global_scale is not None
                                   else "none: pass None"))
    copy_into(tuple(b for b in out if b is not None), results)  # checks each, naming it


def _dequantize(codes, scale, global_scale, shape, dtype, config: QuantConfig, out=None):
    raise_ready()
    _check_parts(codes, scale, global_scale, shape, config, dtype)
    name = str(dtype)[6:]
    extras = {} if global_scale is None else {"global_scale": global_scale}
    return dequantize_arrays(codes, scale, extras, config, tuple(shape),
                             torch_info(codes.device, name, tuple(shape)), name,
                             BACKENDS[codes.device.type], out)


# ---------------------------------------------------------------- operators
def _op(name: str, mutates: tuple[str, ...] = ()):
    return torch.library.custom_op(f"gpuquant::{name}", mutates_args=mutates, device_types=DEVICES)


@_op("quantize_float")
def quantize_float(x: Tensor, element: int, granularity: int, axis: int, group_size: int,
                   scale_format: int, block_n: int, block_k: int, scale_rule: int,
                   convention: int) -> Outputs:
    """Scales from the data + codes of a float format: (codes, scale, global_scale)."""
    return _quantize(x, config_of(element, granularity, axis, group_size, scale_format,
                                  block_n, block_k, scale_rule, convention))


@_op("quantize_float_out", ("codes", "scale", "global_scale"))
def quantize_float_out(x: Tensor, element: int, granularity: int, axis: int, group_size: int,
                       scale_format: int, block_n: int, block_k: int, scale_rule: int,
                       convention: int, codes: Tensor, scale: Tensor,
                       global_scale: OptTensor) -> None:
    """quantize_float into the caller's buffers (global_scale: NVFP4's, else None)."""
    _quantize(x, config_of(element, granularity, axis, group_size, scale_format, block_n,
                           block_k, scale_rule, convention), (codes, scale, global_scale))


@_op("dequantize_float")
def dequantize_float(codes: Tensor, scale: Tensor, global_scale: OptTensor, shape: list[int],
                     dtype: torch.dtype, element: int, granularity: int, axis: int,
                     group_size: int, scale_format: int, block_n: int, block_k: int,
                     scale_rule: int, convention: int) -> Tensor:
    """Float-format codes -> floats of ``dtype``, shaped ``shape``."""
    return _dequantize(codes, scale, global_scale, shape, dtype, config_of(
        element, granularity, axis, group_size, scale_format, block_n, block_k, scale_rule,
        convention))


@_op("dequantize_float_out", ("out",))
def dequantize_float_out(codes: Tensor, scale: Tensor, global_scale: OptTensor,
                         shape: list[int], dtype: torch.dtype, element: int, granularity: int,
                         axis: int, group_size: int, scale_format: int, block_n: int,
                         block_k: int, scale_rule: int, convention: int, out: Tensor) -> None:
    """dequantize_float into the caller's buffer."""
    _dequantize(codes, scale, global_scale, shape, dtype, config_of(
        element, granularity, axis, group_size, scale_format, block_n, block_k, scale_rule,
        convention), out)


def dynamic_config(group_size: int) -> QuantConfig:
    """The config of vLLM's dynamic FP8 e4m3 activations: per token (``group_size`` 0) or per
    1 x ``group_size`` group along the last axis."""
    return (QuantConfig.fp8_per_group(group_size) if group_size
            else QuantConfig.fp8_per_token())


@_op("dynamic_fp8")
def dynamic_fp8(x: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """vLLM's dynamic FP8 e4m3 (reference.fp8_dynamic): (uint8 codes of x's shape, float32
    scale per row of the last axis (``group_size`` 0) or per 1 x ``group_size`` group)."""
    raise_ready()
    codes, scale, _ = dynamic_fp8_parts(x, dynamic_config(group_size), BACKENDS[x.device.type])
    return codes, scale


@dynamic_fp8.register_fake
def _(x, group_size):
    parts = _check_x(x, dynamic_config(group_size))
    return (x.new_empty(parts["data"][1], dtype=torch.uint8),
            x.new_empty(parts["scale"][1], dtype=torch.float32))


# --------------------------------------------------------------------- fakes
@quantize_float.register_fake
def _(x, *cfg):
    parts = _check_x(x, config_of(*cfg))
    codes, scale = ((parts[k][1], getattr(torch, parts[k][0])) for k in ("data", "scale"))
    return (x.new_empty(codes[0], dtype=codes[1]), x.new_empty(scale[0], dtype=scale[1]),
            x.new_empty(() if "global_scale" in parts else (0,), dtype=torch.float32))


@dequantize_float.register_fake
def _(codes, scale, global_scale, shape, dtype, *cfg):
    _check_parts(codes, scale, global_scale, shape, config_of(*cfg), dtype)
    return codes.new_empty(shape, dtype=dtype)


def _writes_its_buffers(*args) -> None:
    """The fake of an ``_out`` operator: it returns nothing."""


for _mutating in (quantize_float_out, dequantize_float_out):
    _mutating.register_fake(_writes_its_buffers)


# ----------------------------------------------- the public API, when traced
def _traceable(x, config, qparams, backend, out) -> bool:
    """True for what the operators do (scales from the data of a torch tensor on its device's
    backend); the rest is left to the eager call, which raises the gq error if any."""
    if not (isinstance(x, torch.Tensor) and isinstance(config, QuantConfig) and config.is_float
            and qparams is None and config.calibration == "minmax" and not config.double_quant
            and backend in (None, BACKENDS.get(x.device.type))):
        return False
    try:
        _check_x(x, config)
    except (QuantizationError, TypeError, ValueError, AttributeError):
        return False
    return out is None  # gq.quantize refuses out= for the float formats (eagerly)


def quantize_parts(x, config, qparams, backend, out):
    """gq.quantize of a float config while torch.compile traces: (codes, scale, global_scale |
    None, info) from the operator, or None where the call is not traceable (given scales,
    out=, non-torch inputs, another backend, bad arguments): it then runs eagerly."""
    if not _traceable(x, config, qparams, backend, out):
        return None
    codes, scale, global_scale = torch.ops.gpuquant.quantize_float(x, *config_args(config))
    info = torch_info(x.device, str(x.dtype)[6:], tuple(x.shape))
    return codes, scale, {"global_scale": global_scale} if config.scale_format == "e4m3" else {}, info


def dequantize(qt, dtype, backend, out):
    """QuantizedTensor.dequantize of a float format while torch.compile traces: the
    dequantize_float operator (other frameworks and backends run eagerly)."""
    data = qt.data
    if (not isinstance(data, torch.Tensor) or qt.config.double_quant
            or backend not in (None, BACKENDS.get(data.device.type))):
        return eager(type(qt).dequantize, qt, dtype, backend, out)
    try:
        dtype = output_dtype(dtype, qt.dtype, qt.framework)
    except QuantizationError:
        return eager(type(qt).dequantize, qt, dtype, backend, out)  # raises it, outside the graph
    args = (data, qt.scale, qt.global_scale, list(qt.shape), getattr(torch, dtype),
            *config_args(qt.config))
    if out is None:
        return torch.ops.gpuquant.dequantize_float(*args)
    torch.ops.gpuquant.dequantize_float_out(*args, out)
    return out
