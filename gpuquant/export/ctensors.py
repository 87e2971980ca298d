"""One Linear weight in compressed-tensors' "pack-quantized" format, and the config that says so.

For a Linear module ``P`` (weight ``[out, in]``) the checkpoint holds
``P.weight_packed`` (int32, see gpuquant/core/pack_quantized.py), ``P.weight_scale`` (``[out, in / G]``
for groups of G, ``[out, 1]`` per channel), ``P.weight_shape`` (int64
``[out, in]``) and, asymmetric only, ``P.weight_zero_point`` (int32, packed
along dim 0). The loader dequantizes ``(q - zp) * scale`` in the scale's
dtype.

Scales are stored in the model's dtype by default, as compressed-tensors
itself does (the scale parameters of the model it loads into have the
weights' dtype). gpuquant rounds its float32 scale to that dtype first and
computes the codes against the rounded scale, so the loaded weights equal
gpuquant's dequantized ones bit for bit. ``scale_dtype="float32"`` keeps the
float32 scale in the file instead; a float16/bfloat16 model's loader then
rounds it itself, after the codes were chosen (see the README).

``scale_rule="half_range"`` is llm-compressor's min/max export: compressed-tensors'
scale amax / ((qmax - qmin) / 2) (zero units: the eps of the scale's dtype) and codes
x / scale in float32, the bytes its compressor writes for float32 weights, and on a GPU
(its Triton quantize) for bfloat16/float16 ones (tests/test_scale_rule.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..backends import select_for
from ..calibration.calibrate import calibrate
from ..config import QuantConfig
from ..core.frameworks import bf16_bits_to_f32, f32_to_bf16_bits, host_copy
from ..core.pack_quantized import pack32
from ..core.packing import unpack_int4
from ..core.qparams import FLOAT32_EPS
from ..errors import InvalidShapeError, QuantizationError, UnsupportedSchemeError
from ..quantize import quantize

__all__ = ["PackOptions", "quantization_config", "quantize_weight", "pack_weight", "int_weight",
           "SCALE_DTYPES", "ACTIVATIONS"]

SCALE_DTYPES = {"float16": "F16", "bfloat16": "BF16", "float32": "F32"}
# dynamic per-token input activations of the W8A8 / W4A8 / W4AFP8 presets
ACTIVATIONS = {"int8": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token",
                        "dynamic": True},
               "fp8": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token",
                       "dynamic": True}}


@dataclasses.dataclass(frozen=True)
class PackOptions:
    """What ``gpuquant export`` does to each Linear weight.

    ``scale_dtype=None`` stores scales in the model's dtype (compressed-tensors'
    own choice); ``targets`` is a regular expression of module names that
    replaces finding Linear modules with transformers. ``activations`` ("int8" or "fp8")
    adds dynamic per-token input activations (compressed-tensors' W8A8 / W4A8 / W4AFP8
    presets); the weights are then stored "int-quantized" (one int8 per code), the format
    compressed-tensors infers for integer weights with quantized activations.
    """

    scheme: str = "int4"
    granularity: str = "group"
    group_size: int = 128
    symmetric: bool = True
    calibration: Any = "minmax"
    scale_dtype: str | None = None
    ignore: tuple[str, ...] = ("lm_head",)
    targets: str | None = None
    ignore_nonfinite: bool = False
    activations: str | None = None
    scale_rule: str = "max"

    def __post_init__(self) -> None:
        if self.scheme not in ("int4", "int8"):
            raise UnsupportedSchemeError(f"scheme={self.scheme!r}: pack-quantized export supports "
                                         "'int4' and 'int8'")
        if self.granularity not in ("group", "channel"):
            raise UnsupportedSchemeError(f"granularity={self.granularity!r}: pack-quantized export "
                                         "supports 'group' and 'channel'")
        if self.scale_dtype is not None and self.scale_dtype not in SCALE_DTYPES:
            raise QuantizationError(f"scale_dtype={self.scale_dtype!r}; accepted: None (the "
                                    "model's dtype), " + ", ".join(SCALE_DTYPES))
        if self.activations is not None and self.activations not in ACTIVATIONS:
            raise UnsupportedSchemeError(f"activations={self.activations!r}; accepted: None, "
                                         + ", ".join(repr(a) for a in ACTIVATIONS))
        if self.activations is not None and not self.symmetric:
            raise UnsupportedSchemeError(f"activations={self.activations!r} takes symmetric "
                                         "weights (the W8A8 / W4AFP8 presets; vLLM's kernels)")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        self.quant_config()  # validates group_size and calibration

    @property
    def format(self) -> str:
        """compressed-tensors' format: "int-quantized" with activations, else "pack-quantized"."""
        return "pack-quantized" if self.activations is None else "int-quantized"

    @property
    def bits(self) -> int:
        return 4 if self.scheme == "int4" else 8

    def quant_config(self) -> QuantConfig:
        group = self.granularity == "group"
        return QuantConfig(scheme=self.scheme, granularity=self.granularity,
                           group_size=self.group_size if group else None, axis=0,
                           symmetric=self.symmetric, calibration=self.calibration,
                           nibble_order="low_first", ignore_nonfinite=self.ignore_nonfinite,
                           scale_rule=self.scale_rule)

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if len(shape) != 2:
            raise InvalidShapeError(f"tensor {name!r} has shape {shape}; a Linear weight is 2-D")
        if self.granularity == "group" and shape[1] % self.group_size:
            raise InvalidShapeError(
                f"tensor {name!r} has {shape[1]} input features, not a multiple of "
                f"--group-size {self.group_size} (compressed-tensors needs whole groups); "
                "choose a group size that divides it, or --granularity channel")


def quantization_config(options: PackOptions, ignore: list[str], targets: list[str]) -> dict:
    """config.json's ``quantization_config``: only keys compressed-tensors accepts."""
    weights = {"num_bits": options.bits, "type": "int", "symmetric": options.symmetric,
               "strategy": options.granularity, "dynamic": False}
    if options.granularity == "group":
        weights["group_size"] = options.group_size
    group = {"targets": targets, "format": options.format, "weights": weights}
    if options.activations is not None:
        group["input_activations"] = dict(ACTIVATIONS[options.activations])
    return {"quant_method": "compressed-tensors", "format": options.format,
            "quantization_status": "compressed", "ignore": ignore,
            "config_groups": {"group_0": group}}


def round_scale(scale: np.ndarray, dtype: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(scale as stored in ``dtype`` (bfloat16 as uint16 bits), the same values in float32)."""
    scale = np.asarray(scale, dtype=np.float32)
    if dtype == "float32":
        return scale, scale
    if dtype == "bfloat16":
        stored = f32_to_bf16_bits(scale)
        values = bf16_bits_to_f32(stored)
    else:
        with np.errstate(over="ignore"):
            stored = scale.astype(np.float16)
        values = stored.astype(np.float32)
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        raise QuantizationError(
            f"tensor {name!r}: {int(bad.sum())} scale(s) (first {float(scale[bad][0]):.3g}) "
            f"become 0 or inf in {dtype}; pass --scale-dtype float32")
    return stored, values


def _rounded_qparams(w: Any, options: PackOptions, scale_dtype: str, name: str):
    """Calibrate ``w``; (stored scale, the stored scale as float32, zero points), on the host."""
    params = calibrate(w, options.quant_config())
    scale = host_copy(params.scale)
    stored, values = round_scale(scale, scale_dtype, name)
    if options.scale_rule == "half_range" and scale_dtype != "float32":
        stored, values = _zero_units_eps(w, options, scale, stored, values, scale_dtype)
    return stored, values, host_copy(params.zero_point)


def _zero_units_eps(w: Any, options: PackOptions, scale, stored, values, scale_dtype: str):
    """compressed-tensors gives a unit of zeros the eps of the scale's dtype (its scale is
    computed in the model's dtype): 2^-7 in bfloat16, 2^-10 in float16, where gpuquant's
    float32 half_range scale is 2^-23. A unit has amax 0 exactly when that scale is 2^-23
    and its "max" scale is 1.0 (a unit of zeros' stand-in; no amax gives both, as
    amax / ((qmax - qmin) / 2) = 2^-23 and amax / qmax = 1 cannot hold at once)."""
    maybe = scale == FLOAT32_EPS
    if not maybe.any():
        return stored, values
    cfg = options.quant_config().replace(scale_rule="max")
    zero = maybe & (host_copy(calibrate(w, cfg).scale) == 1.0)
    eps = np.float32(2.0 ** -7 if scale_dtype == "bfloat16" else 2.0 ** -10)
    stored, values = stored.copy(), values.copy()
    values[zero] = eps
    stored[zero] = f32_to_bf16_bits(eps) if scale_dtype == "bfloat16" else eps.astype(np.float16)
    return stored, values


def quantize_weight(w: Any, options: PackOptions, scale_dtype: str, name: str = "weight"):
    """(QuantizedTensor against the rounded scale, stored scale) of a 2-D weight.

    ``w`` is NumPy, CuPy or torch; the QuantizedTensor is in its framework
    (gpuquant's own ``dequantize`` of it is what the loader will compute).
    """
    stored, values, zp = _rounded_qparams(w, options, scale_dtype, name)
    return quantize(w, options.quant_config(), qparams=(values, zp)), stored


def pack_weight(w: Any, options: PackOptions, scale_dtype: str, name: str) -> dict[str, Any]:
    """{suffix: NumPy array} of one Linear weight: weight_packed, weight_scale, weight_shape
    and (asymmetric) weight_zero_point. The backend of ``w`` quantizes and packs it (on a GPU,
    one kernel)."""
    options.check_shape(name, tuple(w.shape))
    rows, cols = (int(s) for s in w.shape)
    stored, values, zp = _rounded_qparams(w, options, scale_dtype, name)
    words = host_copy(select_for(w).quantize_pack32(w, values, zp, options.quant_config()))
    out = {"weight_packed": words, "weight_scale": stored.reshape(rows, -1),
           "weight_shape": np.array([rows, cols], np.int64)}
    if not options.symmetric:
        out["weight_zero_point"] = pack32(zp.reshape(rows, -1), options.bits, dim=0)
    return out


def int_weight(w: Any, options: PackOptions, scale_dtype: str, name: str) -> dict[str, Any]:
    """{"weight": int8 codes [out, in], "weight_scale"} of one Linear weight in compressed-tensors'
    "int-quantized" format (symmetric: no zero point): the codes of :func:`quantize_weight`, an
    int4 code widened to its own int8 byte."""
    options.check_shape(name, tuple(w.shape))
    rows, cols = (int(s) for s in w.shape)
    qt, stored = quantize_weight(w, options, scale_dtype, name)
    codes = host_copy(qt.data)
    if options.bits == 4:
        codes = unpack_int4(codes, cols, signed=True, nibble_order="low_first")
    return {"weight": np.ascontiguousarray(codes, np.int8).reshape(rows, cols),
            "weight_scale": stored.reshape(rows, -1)}
