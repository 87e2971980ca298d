"""Quantization configuration: schemes, granularities, calibration methods.

A :class:`QuantConfig` is immutable and validated on construction, so every
later stage can trust it. It converts to and from a plain dict of JSON types
(:meth:`QuantConfig.to_dict`, :meth:`QuantConfig.from_dict`), which is how it
is stored in safetensors metadata.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from typing import Any

from .calibration.methods import (
    MAX_ENTROPY_BINS,
    MAX_MSE_CANDIDATES,
    MSE,
    Calibration,
    Entropy,
    Percentile,
    as_calibration,
)
from .errors import (
    InvalidBitWidthError,
    InvalidCalibrationError,
    InvalidShapeError,
    QuantizationError,
    UnsupportedSchemeError,
)
from .formats import schemes as fs

__all__ = ["Scheme", "Granularity", "Percentile", "Entropy", "MSE", "QuantConfig",
           "MAX_ENTROPY_BINS", "MAX_MSE_CANDIDATES"]


class Scheme(str, enum.Enum):
    """Element formats: integer codes and the float formats of gpuquant.formats.schemes.
    ``Scheme("int8")`` and ``Scheme.from_value(8)`` both work."""

    INT4 = "int4"
    INT8 = "int8"
    INT16 = "int16"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"
    FP4_E2M1 = "fp4_e2m1"
    NF4 = "nf4"

    @property
    def bits(self) -> int:
        return fs.ELEMENT_BITS.get(self.value) or int(self.value[3:])

    @property
    def is_float(self) -> bool:
        return self.value in fs.FLOAT_ELEMENTS

    def qrange(self, symmetric: bool) -> tuple[int, int]:
        """(qmin, qmax): signed two's complement when symmetric, else unsigned."""
        if symmetric:
            return -(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1
        return 0, (1 << self.bits) - 1

    @property
    def compression_ratio(self) -> float:
        """Bits of a float32 per bit of code, qparams not counted (8.0 for int4)."""
        return 32.0 / self.bits

    @classmethod
    def from_value(cls, value: Any) -> Scheme:
        if isinstance(value, Scheme):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            name = f"int{value}"
        elif isinstance(value, str):
            name = value.strip().lower()
        else:
            name = None
        for member in cls:
            if member.value == name:
                return member
        raise InvalidBitWidthError(
            f"scheme={value!r} is not supported; accepted: 'int4', 'int8', 'int16' "
            "(or the bit widths 4, 8, 16), " + ", ".join(repr(e) for e in fs.FLOAT_ELEMENTS)
        )

    def __str__(self) -> str:
        return self.value


class Granularity(str, enum.Enum):
    """What one (scale, zero point) pair covers.

    TENSOR: the whole tensor. CHANNEL: each index along ``axis``.
    GROUP: each run of ``group_size`` elements along the last axis.
    TOKEN: each row over the last axis (dynamic per-token activations);
    its qparams have the shape ``x.shape[:-1]``.
    """

    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"
    TOKEN = "token"
    BLOCK = "block"

    @classmethod
    def from_value(cls, value: Any) -> Granularity:
        if isinstance(value, Granularity):
            return value
        name = value.strip().lower() if isinstance(value, str) else None
        if name is not None and name.startswith("per_"):
            name = name[4:]
        for member in cls:
            if member.value == name:
                return member
        raise UnsupportedSchemeError(
            f"granularity={value!r} is not supported; accepted: 'tensor', 'channel', "
            "'group', 'token', 'block' (fp8)"
        )

    def __str__(self) -> str:
        return self.value


_NIBBLE_ORDERS = ("high_first", "low_first")


def _as_int(name: str, value: Any, minimum: int) -> int:
    try:
        if isinstance(value, bool) or isinstance(value, float):
            raise TypeError
        value = operator.index(value)
    except TypeError:
        raise InvalidShapeError(f"{name}={value!r} must be an integer >= {minimum}") from None
    if value < minimum:
        raise InvalidShapeError(f"{name}={value} must be an integer >= {minimum}")
    return value


@dataclasses.dataclass(frozen=True, repr=False)
class QuantConfig(fs.FloatPresets):
    """How to quantize a tensor.

    Args:
        scheme: ``"int4"``, ``"int8"`` or ``"int16"`` (or 4, 8, 16).
        granularity: ``"tensor"``, ``"channel"``, ``"group"`` or ``"token"``.
        symmetric: signed codes and a zero point of 0; else unsigned codes and
            an int32 zero point that makes 0.0 exactly representable.
        axis: the channel axis (negative counts from the end). Channel only.
        num_channels: optional expected size of the channel axis, checked
            against each tensor (``InvalidChannelCountError``). Channel only.
        group_size: elements per group along the last axis (default 128).
            The last group of a row may be shorter. Group only.
        calibration: ``"minmax"``, ``"percentile"`` (= ``Percentile()``),
            ``"entropy"`` (= ``Entropy()``, int4/int8 only), ``"mse"`` (= ``MSE()``),
            or one of those objects with its parameters.
        nibble_order: int4 packing: ``"high_first"`` puts the even element in
            the high nibble (bitsandbytes); ``"low_first"`` is ONNX's order.
        ignore_nonfinite: calibrate over finite values only, instead of
            raising ``NonFiniteError`` on NaN or Inf.
        scale_rule: integers: ``"max"`` (amax / qmax, the default) or ``"half_range"``
            (amax / ((qmax - qmin) / 2) and codes x / scale, compressed-tensors'; symmetric
            only); MX: ``"floor"``, ``"rceil"``, ``"even"``.
        scale_format, block_shape, global_scale_convention, double_quant: the float
            formats' options (gpuquant.formats.schemes; presets ``fp8_*``, ``mxfp8``,
            ``mxfp4``, ``nvfp4``, ``nf4``).
    """

    scheme: Scheme = Scheme.INT8
    granularity: Granularity = Granularity.TENSOR
    symmetric: bool = True
    axis: int = 0
    num_channels: int | None = None
    group_size: int | None = None
    calibration: Calibration = "minmax"
    nibble_order: str = "high_first"
    ignore_nonfinite: bool = False
    scale_format: str | None = None
    block_shape: tuple[int, int] | None = None
    scale_rule: str | None = None
    global_scale_convention: str | None = None
    double_quant: bool = False

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("scheme", Scheme.from_value(self.scheme))
        set_("granularity", Granularity.from_value(self.granularity))
        set_("symmetric", _as_bool("symmetric", self.symmetric))
        set_("ignore_nonfinite", _as_bool("ignore_nonfinite", self.ignore_nonfinite))
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise InvalidShapeError(f"axis={self.axis!r} must be an integer")
        if self.num_channels is not None:
            set_("num_channels", _as_int("num_channels", self.num_channels, 1))
        for name, value in fs.check_float_fields(self.scheme.value, self.granularity.value,
                                              fs.float_fields(self)).items():
            set_(name, value)
        if self.granularity is Granularity.GROUP:
            size = 128 if self.group_size is None else self.group_size
            set_("group_size", _as_int("group_size", size, 1))
        elif self.group_size is not None:
            raise InvalidShapeError(
                f"group_size={self.group_size!r} applies only to granularity='group', "
                f"not {self.granularity.value!r}"
            )
        set_("calibration", as_calibration(self.calibration))
        if self.is_float:
            fs.check_float_recipe(self, isinstance(self.calibration, Percentile))
        if isinstance(self.calibration, Entropy) and self.scheme is Scheme.INT16:
            raise UnsupportedSchemeError(
                "calibration='entropy' supports int4 and int8 (2^(bits-1) quantized bins); "
                "for int16 use 'minmax', 'percentile' or 'mse'"
            )
        if isinstance(self.calibration, Entropy) and self.calibration.bins < 1 << (self.bits - 1):
            raise InvalidCalibrationError(
                f"Entropy bins={self.calibration.bins} is below the {1 << (self.bits - 1)} "
                f"quantized bins of {self.scheme.value}; use bins >= {1 << (self.bits - 1)}"
            )
        if not isinstance(self.nibble_order, str) or self.nibble_order not in _NIBBLE_ORDERS:
            raise QuantizationError(
                f"nibble_order={self.nibble_order!r} is not supported; accepted: "
                + ", ".join(repr(o) for o in _NIBBLE_ORDERS)
            )

    @property
    def bits(self) -> int:
        """Bits per code: 4, 8 or 16."""
        return self.scheme.bits

    @property
    def element(self) -> str:
        """The element format's name: "int4", ..., "fp8_e4m3", "fp4_e2m1", "nf4"."""
        return self.scheme.value

    @property
    def is_float(self) -> bool:
        """True for the float element formats (fp8, fp4_e2m1, nf4)."""
        return self.scheme.is_float

    @property
    def qmin(self) -> int:
        """The smallest code: -2^(bits-1) symmetric, 0 asymmetric."""
        return self.scheme.qrange(self.symmetric)[0]

    @property
    def qmax(self) -> int:
        """The largest code: 2^(bits-1) - 1 symmetric, 2^bits - 1 asymmetric."""
        return self.scheme.qrange(self.symmetric)[1]

    @property
    def code_dtype(self) -> str:
        """NumPy dtype name of one unpacked code (int4 codes unpack to int8/uint8)."""
        if self.is_float:
            return "uint8"
        width = max(self.bits, 8)
        return f"int{width}" if self.symmetric else f"uint{width}"

    @property
    def storage_dtype(self) -> str:
        """dtype of :attr:`QuantizedTensor.data`: uint8 for packed int4."""
        return "uint8" if self.bits == 4 else self.code_dtype

    @property
    def compression_ratio(self) -> float:
        """Nominal ratio against float32, qparams not counted."""
        return self.scheme.compression_ratio

    @classmethod
    def int8_symmetric(cls) -> QuantConfig:
        """int8, one scale for the whole tensor, codes -128..127, zero point 0."""
        return cls(scheme="int8", granularity="tensor", symmetric=True)

    @classmethod
    def int8_asymmetric(cls) -> QuantConfig:
        """int8, one scale and zero point for the whole tensor, codes 0..255."""
        return cls(scheme="int8", granularity="tensor", symmetric=False)

    @classmethod
    def int8_per_channel(cls, num_channels: int | None = None, axis: int = 0) -> QuantConfig:
        """int8 symmetric, one scale per index along ``axis`` (0: the output channels of a
        (out, in) weight); ``num_channels``, when given, is checked against each tensor."""
        return cls(scheme="int8", granularity="channel", symmetric=True, axis=axis,
                   num_channels=num_channels)

    @classmethod
    def int4_symmetric(cls) -> QuantConfig:
        """int4, one scale for the whole tensor, codes -8..7 packed two per byte."""
        return cls(scheme="int4", granularity="tensor", symmetric=True)

    @classmethod
    def int4_per_channel(cls, num_channels: int | None = None, axis: int = 0) -> QuantConfig:
        """int4 symmetric, one scale per index along ``axis``, codes packed two per byte."""
        return cls(scheme="int4", granularity="channel", symmetric=True, axis=axis,
                   num_channels=num_channels)

    @classmethod
    def int4_per_group(cls, group_size: int = 128, symmetric: bool = True) -> QuantConfig:
        """int4, one scale per run of ``group_size`` elements along the last axis.

        Symmetric by default, like every preset and ``QuantConfig`` itself;
        ``symmetric=False`` adds a zero point per group (codes 0..15), as GPTQ
        and AWQ checkpoints do.
        """
        return cls(scheme="int4", granularity="group", group_size=group_size,
                   symmetric=symmetric)

    def replace(self, **changes: Any) -> QuantConfig:
        """A copy with some fields changed, validated like a new config."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A dict of JSON types that :meth:`from_dict` turns back into this config."""
        calibration: Any = self.calibration
        if isinstance(calibration, Percentile):
            calibration = {"method": "percentile", "lower": calibration.lower,
                           "upper": calibration.upper}
        elif isinstance(calibration, Entropy):
            calibration = {"method": "entropy", "bins": calibration.bins}
        elif isinstance(calibration, MSE):
            calibration = {"method": "mse", "candidates": calibration.candidates}
        return {
            "scheme": self.scheme.value,
            "granularity": self.granularity.value,
            "symmetric": self.symmetric,
            "axis": self.axis,
            "num_channels": self.num_channels,
            "group_size": self.group_size,
            "calibration": calibration,
            "nibble_order": self.nibble_order,
            "ignore_nonfinite": self.ignore_nonfinite,
            **(fs.float_dict(self) if self.is_float else {}),
            **({"scale_rule": self.scale_rule} if self.scale_rule == "half_range" else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        """The config :meth:`to_dict` gave; QuantizationError for anything else."""
        if not isinstance(data, dict):
            raise QuantizationError(f"QuantConfig.from_dict needs a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise QuantizationError(
                f"QuantConfig.from_dict: unknown keys {unknown}; accepted: {sorted(known)}"
            )
        kwargs = dict(data)
        calibration = kwargs.get("calibration")
        if isinstance(calibration, dict):
            kinds = {"percentile": Percentile, "entropy": Entropy, "mse": MSE}
            method = calibration.get("method")
            kind = kinds.get(method) if isinstance(method, str) else None
            params = {k: v for k, v in calibration.items() if k != "method"}
            fields = {f.name for f in dataclasses.fields(kind)} if kind else set()
            if kind is None or not set(params) <= fields:
                raise InvalidCalibrationError(f"calibration={calibration!r} is not understood")
            kwargs["calibration"] = kind(**params)
        return cls(**kwargs)

    def __repr__(self) -> str:
        parts = [f"scheme={self.scheme.value!r}", f"granularity={self.granularity.value!r}",
                 f"symmetric={self.symmetric}"]
        if self.granularity is Granularity.CHANNEL:
            parts.append(f"axis={self.axis}")
            if self.num_channels is not None:
                parts.append(f"num_channels={self.num_channels}")
        if self.granularity is Granularity.GROUP:
            parts.append(f"group_size={self.group_size}")
        cal = self.calibration
        parts.append(f"calibration={cal!r}" if isinstance(cal, str) else f"calibration={cal}")
        if self.bits == 4 and not self.is_float:
            parts.append(f"nibble_order={self.nibble_order!r}")
        if self.ignore_nonfinite:
            parts.append("ignore_nonfinite=True")
        if self.scale_rule == "half_range":
            parts.append("scale_rule='half_range'")
        if self.is_float:
            parts += [f"{k}={getattr(self, k)!r}" for k in fs.FLOAT_KEYS if getattr(self, k)]
        return "QuantConfig(" + ", ".join(parts) + ")"

    def describe(self) -> str:
        """A short label such as ``int4/group128/asym/minmax``."""
        gran = self.granularity.value
        if self.granularity is Granularity.GROUP:
            gran += str(self.group_size)
        elif self.granularity is Granularity.CHANNEL:
            gran += f"(axis={self.axis})"
        elif self.block_shape is not None:
            gran += "{}x{}".format(*self.block_shape)
        if self.is_float:
            extra = (self.scale_rule, self.global_scale_convention, "double_quant" * self.double_quant)
            return f"{self.scheme.value}/{gran}/{self.scale_format}" + "".join(f"/{v}" for v in extra if v)
        rule = "/half_range" if self.scale_rule == "half_range" else ""
        return f"{self.scheme.value}/{gran}/{'sym' if self.symmetric else 'asym'}/{self.calibration}{rule}"


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise QuantizationError(f"{name}={value!r} must be True or False")

