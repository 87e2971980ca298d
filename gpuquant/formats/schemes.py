"""The float element formats of QuantConfig: names, validation and presets.

FP8 (e4m3fn, e5m2) with float32 scales per tensor, channel, token, group or 2-D
block; the OCP microscaling formats (MXFP8, MXFP4: E8M0 scales per 32 along the
last axis, with a scale rule); NVFP4 (E2M1, an E4M3 scale per 16 and a float32
global scale); bitsandbytes' NF4 (float32 absmax per block of the flattened
tensor, or with ``double_quant`` those absmax coded in 8 bits per 256, as its
compress_statistics). docs/ARCHITECTURE.md has the contract of each; gpuquant.formats the
NumPy reference. This module only names and checks: it imports no array library.
"""

from __future__ import annotations

import operator
from typing import Any

from ..errors import InvalidShapeError, UnsupportedSchemeError

__all__ = ["FLOAT_ELEMENTS", "FP8_ELEMENTS", "SCALE_FORMATS", "SCALE_RULES", "INT_SCALE_RULES",
           "GLOBAL_SCALE_CONVENTIONS", "ELEMENT_BITS", "FloatPresets", "check_float_fields",
           "check_float_recipe", "FLOAT_KEYS", "float_fields", "float_dict"]

FP8_ELEMENTS = ("fp8_e4m3", "fp8_e5m2")
FLOAT_ELEMENTS = (*FP8_ELEMENTS, "fp4_e2m1", "nf4")
ELEMENT_BITS = {"fp8_e4m3": 8, "fp8_e5m2": 8, "fp4_e2m1": 4, "nf4": 4}
SCALE_FORMATS = ("float32", "e8m0", "e4m3")
SCALE_RULES = ("floor", "rceil", "even")
INT_SCALE_RULES = ("max", "half_range")  # symmetric amax / qmax (the seed's), or peers' rule
GLOBAL_SCALE_CONVENTIONS = ("compressed_tensors", "modelopt")
_DEFAULT_GROUP = {"e8m0": 32, "e4m3": 16}  # MX blocks of 32, NVFP4 blocks of 16
FLOAT_KEYS = ("scale_format", "block_shape", "scale_rule", "global_scale_convention",
              "double_quant")


def float_fields(cfg: Any) -> dict[str, Any]:
    """The raw float options of a config being validated (and its group_size, symmetric)."""
    return {name: getattr(cfg, name) for name in (*FLOAT_KEYS, "group_size", "symmetric")}


def float_dict(cfg: Any) -> dict[str, Any]:
    """The float options of a valid config as JSON types (QuantConfig.to_dict); double_quant
    only when set, so the files of every other format keep their metadata."""
    out = {name: getattr(cfg, name) for name in FLOAT_KEYS if name != "double_quant"}
    out["block_shape"] = None if cfg.block_shape is None else list(cfg.block_shape)
    if cfg.double_quant:
        out["double_quant"] = True
    return out


def _double_quant(value: Any, element: str) -> bool:
    if not isinstance(value, bool) and type(value).__name__ != "bool_":
        raise UnsupportedSchemeError(f"double_quant={value!r} must be True or False")
    if value and element != "nf4":
        raise UnsupportedSchemeError(f"double_quant=True applies to element 'nf4' only "
                                     f"(bitsandbytes' compress_statistics), not {element!r}")
    return bool(value)


def check_float_recipe(cfg: Any, percentile: bool) -> None:
    """Float elements are symmetric and take their scale from amax: 'minmax', or a
    percentile for FP8 with float32 static scales (per tensor, channel, token, group),
    where a Calibrator chooses the amax."""
    static = (cfg.scheme.value in FP8_ELEMENTS and cfg.scale_format == "float32"
              and cfg.granularity.value != "block")
    if not cfg.symmetric or not (cfg.calibration == "minmax" or percentile and static):
        raise UnsupportedSchemeError(
            f"scheme={cfg.scheme.value!r} takes symmetric=True and calibration='minmax' (its "
            "scale comes from amax; FP8 with float32 scales also takes 'percentile', through "
            f"gq.Calibrator), got symmetric={cfg.symmetric}, calibration={cfg.calibration!r}")


def _choice(name: str, value: Any, accepted: tuple[str, ...]) -> str:
    text = value.strip().lower() if isinstance(value, str) else None
    if text not in accepted:
        raise UnsupportedSchemeError(f"{name}={value!r} is not supported; accepted: "
                                     + ", ".join(repr(a) for a in accepted))
    return text


def _block_shape(value: Any) -> tuple[int, int]:
    try:
        dims = tuple(value)
        if len(dims) != 2 or any(isinstance(d, (bool, float)) for d in dims):
            raise TypeError
        dims = tuple(operator.index(d) for d in dims)
    except TypeError:
        raise InvalidShapeError(f"block_shape={value!r} must be two integers >= 1, "
                                "e.g. (128, 128)") from None
    if min(dims) < 1:
        raise InvalidShapeError(f"block_shape={value!r} must be two integers >= 1")
    return dims


def _forbid(name: str, value: Any, why: str) -> None:
    if value is not None:
        raise UnsupportedSchemeError(f"{name}={value!r} {why}")


def check_float_fields(element: str, granularity: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Validated (scale_format, block_shape, scale_rule, global_scale_convention, group_size)
    (+ double_quant) of a config whose element is ``element``, defaults filled in; raises
    naming the argument."""
    dq = _double_quant(fields["double_quant"], element)
    fmt, shape = fields["scale_format"], fields["block_shape"]
    rule, gsc, group = fields["scale_rule"], fields["global_scale_convention"], fields["group_size"]
    if element not in FLOAT_ELEMENTS:
        fmt = _choice("scale_format", "float32" if fmt is None else fmt, ("float32",))
        for name in ("block_shape", "global_scale_convention"):
            _forbid(name, fields[name], f"applies to float elements only, not {element!r}")
        rule = _int_scale_rule(rule, fields.get("symmetric", True))
        if granularity == "block":
            raise UnsupportedSchemeError(f"granularity='block' applies to fp8 elements only, not "
                                         f"{element!r}; accepted there: 'tensor', 'channel', "
                                         "'group', 'token'")
        return dict(scale_format=fmt, block_shape=None, scale_rule=rule,
                    global_scale_convention=None, group_size=group, double_quant=dq)
    default_fmt = "e8m0" if element == "fp4_e2m1" else "float32"
    fmt = _choice("scale_format", default_fmt if fmt is None else fmt, _scale_formats(element))
    if fmt != "float32" or element == "nf4":
        if granularity != "group":
            raise UnsupportedSchemeError(
                f"granularity={granularity!r} is not supported for element={element!r} with "
                f"scale_format={fmt!r}; accepted: 'group' (blocks along the last axis"
                + (", over the flattened tensor for nf4)" if element == "nf4" else ")"))
        if group is None:
            group = 64 if element == "nf4" else _DEFAULT_GROUP[fmt]
    if granularity == "block":
        shape = _block_shape((128, 128) if shape is None else shape)
    else:
        _forbid("block_shape", shape, f"applies only to granularity='block', not {granularity!r}")
    if fmt == "e8m0":
        rule = _choice("scale_rule", "floor" if rule is None else rule, SCALE_RULES)
    else:  # "max": the integer default, carried by cfg.replace(scheme=...), means nothing here
        rule = None if rule == "max" else rule
        _forbid("scale_rule", rule, "applies only to scale_format='e8m0' (MXFP8, MXFP4)")
    if fmt == "e4m3":
        gsc = _choice("global_scale_convention", "compressed_tensors" if gsc is None else gsc,
                      GLOBAL_SCALE_CONVENTIONS)
    else:
        _forbid("global_scale_convention", gsc, "applies only to scale_format='e4m3' (NVFP4)")
    return dict(scale_format=fmt, block_shape=shape, scale_rule=rule,
                global_scale_convention=gsc, group_size=group, double_quant=dq)


def _int_scale_rule(rule: Any, symmetric: bool) -> str:
    """An integer config's scale rule: "max" (amax / qmax, the default) or "half_range"
    (amax / ((qmax - qmin) / 2), symmetric only: compressed-tensors' and torchao's rule)."""
    if isinstance(rule, str) and rule.strip().lower() in SCALE_RULES:
        raise UnsupportedSchemeError(f"scale_rule={rule!r} applies to float elements only (MX); "
                                     "accepted for integers: 'max', 'half_range'")
    rule = _choice("scale_rule", "max" if rule is None else rule, INT_SCALE_RULES)
    if rule == "half_range" and not symmetric:
        raise UnsupportedSchemeError(
            "scale_rule='half_range' applies to symmetric=True only: an asymmetric scale is "
            "already (hi - lo) / (qmax - qmin); accepted with symmetric=False: 'max'")
    return rule


def _scale_formats(element: str) -> tuple[str, ...]:
    if element in FP8_ELEMENTS:
        return ("float32", "e8m0")
    return ("e8m0", "e4m3") if element == "fp4_e2m1" else ("float32",)


class FloatPresets:
    """The float recipes, as classmethods of QuantConfig."""

    @classmethod
    def fp8_per_tensor(cls, element: str = "fp8_e4m3"):
        """FP8, one float32 scale amax/fmax for the whole tensor (compressed-tensors FP8)."""
        return cls(scheme=element, granularity="tensor")

    @classmethod
    def fp8_per_channel(cls, element: str = "fp8_e4m3", axis: int = 0):
        """FP8, one float32 scale per index of ``axis`` (0: the rows of a weight)."""
        return cls(scheme=element, granularity="channel", axis=axis)

    @classmethod
    def fp8_per_token(cls, element: str = "fp8_e4m3"):
        """FP8, one float32 scale per row over the last axis (dynamic activations)."""
        return cls(scheme=element, granularity="token")

    @classmethod
    def fp8_per_group(cls, group_size: int = 128, element: str = "fp8_e4m3"):
        """FP8, one float32 scale per run of ``group_size`` along the last axis (1x128)."""
        return cls(scheme=element, granularity="group", group_size=group_size)

    @classmethod
    def fp8_block(cls, block_shape: tuple[int, int] = (128, 128), element: str = "fp8_e4m3"):
        """FP8 in 2-D blocks of a 2-D tensor, DeepSeek-V3's weight_scale_inv layout."""
        return cls(scheme=element, granularity="block", block_shape=block_shape)

    @classmethod
    def mxfp8(cls, scale_rule: str = "floor", element: str = "fp8_e4m3", block_size: int = 32):
        """OCP MXFP8: E8M0 scale per ``block_size`` (32) along the last axis."""
        return cls(scheme=element, granularity="group", group_size=block_size,
                   scale_format="e8m0", scale_rule=scale_rule)

    @classmethod
    def mxfp4(cls, scale_rule: str = "floor", block_size: int = 32):
        """OCP MXFP4: E2M1 elements, E8M0 scale per ``block_size`` (32) along the last axis."""
        return cls(scheme="fp4_e2m1", granularity="group", group_size=block_size,
                   scale_format="e8m0", scale_rule=scale_rule)

    @classmethod
    def nvfp4(cls, global_scale_convention: str = "compressed_tensors"):
        """NVFP4: E2M1 elements, E4M3 scale per 16 along the last axis, float32 global scale."""
        return cls(scheme="fp4_e2m1", granularity="group", group_size=16, scale_format="e4m3",
                   global_scale_convention=global_scale_convention)

    @classmethod
    def nf4(cls, block_size: int = 64, double_quant: bool = False):
        """bitsandbytes NF4: float32 absmax per ``block_size`` of the flattened tensor;
        ``double_quant=True``: those absmax coded as bitsandbytes' compress_statistics=True
        (uint8 codes of absmax - mean, a float32 scale per 256 of them, the float32 mean)."""
        return cls(scheme="nf4", granularity="group", group_size=block_size,
                   double_quant=double_quant)
