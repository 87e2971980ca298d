"""The parts of a float-format QuantizedTensor: their checks, dequantization, and the
backend dispatch (NumPy reference on the CPU, gpuquant.backends.triton.floats on a GPU).

A float-format tensor holds ``data`` (uint8 codes: FP8 of x's shape, E2M1 packed
(..., ceil(K/2)), NF4 packed (ceil(numel/2),)), ``scale`` (float32, or uint8 E8M0 /
E4M3 bit patterns, or a double-quantized NF4's uint8 absmax codes), no zero point, and
its extra parts (EXTRA_PARTS): ``global_scale`` (float32 0-d, NVFP4), ``nested_absmax``
(float32 per 256 absmax codes) and ``nested_offset`` (float32 0-d) of a double-quantized
NF4, named as bitsandbytes' QuantState.as_dict names them.
gpuquant.formats.reference has the formulas; docs/ARCHITECTURE.md the contract.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.frameworks import (
    FLOAT_DTYPES,
    TensorInfo,
    array_device,
    dtype_name,
    framework_of,
    from_numpy,
    output_dtype,
    prepare,
    to_numpy,
)
from ..errors import (
    BackendUnavailableError,
    InvalidDtypeError,
    InvalidShapeError,
    QuantizationError,
    UnsupportedSchemeError,
)
from . import codes_shape, dequantize_float, quantize_float, unit_shape
from .reference import fp8_codes, fp8_dynamic, fp8_scale, nested_shape

__all__ = ["expected_parts", "check_part_arrays", "check_float_parts", "quantize_parts", "dequantize_parts",
           "dequantize_arrays", "float_suffixes", "static_fp8_qparams", "static_scales",
           "EXTRA_PARTS", "extra_names", "extras_of", "dynamic_fp8_parts"]

EXTRA_PARTS = ("global_scale", "nested_absmax", "nested_offset")


def extra_names(config) -> tuple[str, ...]:
    """The extra parts of a float-format tensor under ``config``, in their stored order."""
    if config.scale_format == "e4m3":
        return ("global_scale",)
    return ("nested_absmax", "nested_offset") if getattr(config, "double_quant", False) else ()


def extras_of(qt) -> dict[str, Any]:
    """name -> array of a float-format QuantizedTensor's extra parts."""
    return {name: getattr(qt, name) for name in extra_names(qt.config)}


def float_suffixes(config) -> tuple[str, ...]:
    """The stored tensors of a float-format NAME: NAME.qdata, NAME.scale, then NAME.<extra>
    (NAME.global_scale; NAME.nested_absmax, NAME.nested_offset)."""
    return (".qdata", ".scale", *("." + name for name in extra_names(config)))


def expected_parts(shape: tuple[int, ...], config) -> dict[str, tuple[str, tuple[int, ...]]]:
    """part name -> (dtype name, shape) of a float-format tensor of ``shape``."""
    dq = getattr(config, "double_quant", False)
    scale_dtype = "float32" if config.scale_format == "float32" and not dq else "uint8"
    units = unit_shape(shape, config)
    parts = {"data": ("uint8", codes_shape(shape, config)), "scale": (scale_dtype, units)}
    if config.scale_format == "e4m3":
        parts["global_scale"] = ("float32", ())
    if dq:
        parts["nested_absmax"] = ("float32", nested_shape(units[0]))
        parts["nested_offset"] = ("float32", ())
    return parts


def check_part_arrays(wanted: dict, framework: str, device, shape, config) -> None:
    """Every part of a QuantizedTensor, integer or float: ``wanted`` maps a part's name to
    (array, dtype name, shape); they must be arrays of ``framework`` on ``device`` with that
    dtype and shape, and not on the meta device. QuantizationError naming the part."""
    for name, (value, want_dtype, want_shape) in wanted.items():
        if not hasattr(value, "dtype") or not hasattr(value, "shape"):
            raise InvalidDtypeError(f"{name} must be an array, got {type(value).__name__}")
        if (framework_of(value), array_device(value)) != (framework, device):
            raise QuantizationError(f"{name} is a {framework_of(value)} array on "
                                    f"{array_device(value)} but data is a {framework} array on "
                                    f"{device}; keep the parts together")
        if dtype_name(value) != want_dtype:
            raise InvalidDtypeError(f"{name} has dtype {dtype_name(value)}; {config.describe()} "
                                    f"needs {want_dtype}")
        if tuple(int(d) for d in value.shape) != tuple(want_shape):
            raise InvalidShapeError(f"{name} has shape {tuple(value.shape)}; shape {shape} under "
                                    f"{config.describe()} needs {tuple(want_shape)}")
    if device == "meta":
        raise BackendUnavailableError("QuantizedTensor parts are on the meta device, which "
                                      "holds no values")


def check_float_parts(data, scale, extras: dict, shape, dtype, config, info):
    """(dtype, info) of valid float-format parts (``shape`` a checked tuple; ``extras`` name ->
    array or None, EXTRA_PARTS); QuantizationError naming the part. Values are not checked: a
    non-finite input gives NaN/Inf scales."""
    if not isinstance(dtype, str) or dtype not in FLOAT_DTYPES:
        raise InvalidDtypeError(f"dtype={dtype!r} is not an original dtype; accepted: "
                                + ", ".join(FLOAT_DTYPES))
    framework, device = framework_of(data), array_device(data)
    values = {"data": data, "scale": scale, **extras}
    wanted = expected_parts(shape, config)
    for name, value in extras.items():
        if value is not None and name not in wanted:
            raise QuantizationError(
                f"{name} is given but {config.describe()} has none (global_scale: NVFP4, "
                "scale_format='e4m3'; nested_absmax, nested_offset: nf4 with double_quant=True)")
    check_part_arrays({name: (values[name], *want) for name, want in wanted.items()}, framework,
                      device, shape, config)
    return dtype, info or TensorInfo(framework, dtype, shape, device)


def _backend_name(info: TensorInfo, backend: str | None) -> str:
    """"numpy" or "triton": the integer formats' selection, with its checks and messages."""
    from ..backends import select

    return select(info, backend).name


def _triton_float():
    try:
        from ..backends import triton_floats

        triton_float = triton_floats()
    except ImportError as exc:
        raise BackendUnavailableError(
            "the float formats' Triton kernels (gpuquant.backends.triton.floats) cannot be "
            f"imported here ({exc}); use CPU data with backend='numpy', or pip install "
            "'gpuquant[triton]'") from None
    return triton_float


def _to_torch(a):
    if a is None or framework_of(a) != "cupy":
        return a
    import torch

    return torch.from_dlpack(a)


def _to_caller(a, info: TensorInfo):
    if a is None or info.framework != "cupy":
        return a
    import cupy

    return cupy.from_dlpack(a)


def static_fp8_qparams(lo: np.ndarray, hi: np.ndarray, config) -> tuple[np.ndarray, np.ndarray]:
    """(float32 scale, int32 zero zero-points) of calibrated per-unit ranges under an FP8
    config with float32 scales: ``max(|lo|, |hi|) / fmax``, as gq.quantize computes."""
    if not static_scales(config):
        raise UnsupportedSchemeError(
            f"static scales apply to FP8 with float32 scales per tensor, channel, token or "
            f"group; {config.describe()} computes its scales from each tensor in gq.quantize")
    amax = np.maximum(np.abs(np.asarray(lo, np.float32)), np.abs(np.asarray(hi, np.float32)))
    scale = fp8_scale(amax, config)
    return scale, np.zeros(scale.shape, np.int32)


def static_scales(config) -> bool:
    """Whether a float config takes given (calibrated) scales: FP8, float32, not 2-D blocks."""
    return (config.element in ("fp8_e4m3", "fp8_e5m2") and config.scale_format == "float32"
            and str(config.granularity) != "block")


def _extras(config, extra) -> dict[str, Any]:
    """name -> array of quantize_float's third result (None, a global scale, or the pair
    (nested_absmax, nested_offset))."""
    names = extra_names(config)
    return dict(zip(names, extra if len(names) == 2 else (extra,)))


def _extra_arg(config, extras: dict):
    """quantize_float's third result back from the named extras (dequantize_float's argument)."""
    values = tuple(extras[name] for name in extra_names(config))
    return values if len(values) == 2 else values[0] if values else None


def quantize_parts(x: Any, config, backend: str | None = None, qparams: Any = None):
    """(codes, scale, extras, info) of ``x`` in its own framework and device, ``extras`` the
    name -> array of its extra parts (extra_names); ``qparams``: given FP8 scales (a QParams or
    (scale, zero_point) with zero points 0)."""
    x, info = prepare(x)
    if qparams is not None:
        return _given_fp8(x, info, config, backend, qparams)
    if _backend_name(info, backend) == "triton":
        codes, scale, extra = _triton_float().quantize_float(_to_torch(x), config)
        extras = {k: _to_caller(v, info) for k, v in _extras(config, extra).items()}
        return _to_caller(codes, info), _to_caller(scale, info), extras, info
    x32 = np.asarray(to_numpy(x, info), dtype=np.float32)  # float64 rounds once to float32
    codes, scale, extra = quantize_float(x32, config)
    arrays = (np.asarray(a) for a in (codes, scale, *_extras(config, extra).values()))
    codes, scale, *rest = (from_numpy(a if a.flags.c_contiguous else a.copy(), info)
                           for a in arrays)
    return codes, scale, dict(zip(extra_names(config), rest)), info


def dynamic_fp8_parts(x: Any, config, backend: str | None = None):
    """(codes, scale, info) of vLLM's dynamic FP8 e4m3 activations (reference.fp8_dynamic) of
    ``x`` under ``config`` (fp8_e4m3, per token or per group): the Triton kernel
    (quantize_fp8_dynamic) for torch CUDA / CuPy inputs, the NumPy reference on the CPU."""
    x, info = prepare(x)
    if len(info.shape) == 0:
        raise InvalidShapeError("x is 0-d; dynamic FP8 activations take a tensor of rank >= 1 "
                                "(scales per row of the last axis)")
    gran = str(config.granularity)
    if _backend_name(info, backend) == "triton":
        codes, scale = _triton_float().quantize_fp8_dynamic(_to_torch(x), gran,
                                                            config.group_size or 0)
        return _to_caller(codes, info), _to_caller(scale, info), info
    codes, scale = fp8_dynamic(np.asarray(to_numpy(x, info), dtype=np.float32), config)
    return from_numpy(codes, info), from_numpy(scale, info), info


def _given_fp8(x, info, config, backend, qparams):
    static_fp8_qparams(np.zeros(0), np.zeros(0), config)  # raises for the other formats
    try:
        scale, zero_point = qparams
    except (TypeError, ValueError):
        raise QuantizationError("qparams must be a gq.QParams or a (scale, zero_point) pair") from None
    if _backend_name(info, backend) == "triton":
        raise UnsupportedSchemeError("given FP8 scales are quantized by the NumPy reference only; "
                                     "pass CPU data (the Triton kernels compute their own scales)")
    scale_h, zp_h = (to_numpy(*prepare(a, name, require_float=False))
                     for a, name in ((scale, "scale"), (zero_point, "zero_point")))
    if dtype_name(scale_h) != "float32" or np.any(zp_h != 0):
        raise QuantizationError(f"qparams for {config.describe()} need float32 scales and zero "
                                "points of 0 (FP8 is symmetric)")
    x32 = np.asarray(to_numpy(x, info), dtype=np.float32)
    codes = fp8_codes(x32, scale_h, config)
    return from_numpy(codes, info), from_numpy(np.array(scale_h, np.float32), info), {}, info


def dequantize_parts(qt, dtype: Any = None, backend: str | None = None, out: Any = None):
    """The values of a float-format QuantizedTensor in ``dtype`` (default: the original)."""
    out_dtype = output_dtype(dtype, qt.dtype, qt._info.framework)
    return dequantize_arrays(qt.data, qt.scale, extras_of(qt), qt.config, qt.shape, qt._info,
                             out_dtype, backend, out)


def dequantize_arrays(data, scale, extras: dict, config, shape, info: TensorInfo, out_dtype: str,
                      backend: str | None = None, out: Any = None):
    """The values of checked float-format parts of a tensor of ``shape`` in ``out_dtype`` (a
    checked name), in ``info``'s framework; ``extras``: name -> array of its extra parts
    (extra_names); ``out``: a buffer to copy them into."""
    if _backend_name(info, backend) == "triton":
        import torch

        extra = _extra_arg(config, {k: _to_torch(v) for k, v in extras.items()})
        y = _triton_float().dequantize_float(_to_torch(data), _to_torch(scale), extra, config,
                                             shape, dtype=getattr(torch, out_dtype))
        y = _to_caller(y, info)
    else:
        host = {name: to_numpy(*prepare(a, name, require_float=False)) for name, a in
                (("data", data), ("scale", scale), *extras.items())}
        y32 = dequantize_float(host["data"], host["scale"], _extra_arg(config, host), config,
                               shape)
        compute = "float32" if out_dtype == "bfloat16" else out_dtype
        y = from_numpy(y32.astype(compute, copy=False), info, out_dtype)
    if out is None:
        return y
    from ..core.plan import copy_into

    return copy_into((out,), (y,))[0]
