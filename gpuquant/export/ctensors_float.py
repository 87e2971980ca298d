"""One Linear weight in compressed-tensors' "float-quantized" (FP8 E4M3) format, and its config.

For a Linear module ``P`` (weight ``[out, in]``) the checkpoint holds ``P.weight``
(float8_e4m3fn bit patterns, safetensors tag ``F8_E4M3``) and ``P.weight_scale``
(float32): ``(1,)`` per tensor, ``(out, 1)`` per channel, ``(ceil(out/bn), ceil(in/bk))``
in 2-D blocks. The loader dequantizes ``code * scale``. The codes are gpuquant's NumPy
reference (``quantize_float``: ``RNE(clamp(x / s, -448, 448))``, a float32 division), which is
what compressed-tensors' FloatQuantizationCompressor computes for float32 weights and scales
(tests/test_export_fp8.py compares the bytes). Activations are dynamic per token (the
``FP8_DYNAMIC`` preset) or, for blocks, dynamic per group of 128 (``FP8_BLOCK``).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from ..config import QuantConfig
from ..errors import InvalidShapeError, UnsupportedSchemeError
from ..formats.reference import fp8_codes, quantize_float
from . import ctensors_fp4 as fp4

__all__ = ["FP8_GRANULARITIES", "FloatOptions", "fp8_config", "fp8_quantization_config", "pack_fp8_weight"]

FP8_GRANULARITIES = ("tensor", "channel", "block")


def fp8_config(granularity: str, block_shape: tuple[int, int] = (128, 128)) -> QuantConfig:
    """The gpuquant FP8 E4M3 config of one ``--granularity``."""
    if granularity == "tensor":
        return QuantConfig.fp8_per_tensor()
    if granularity == "channel":
        return QuantConfig.fp8_per_channel()
    if granularity == "block":
        return QuantConfig.fp8_block(block_shape=tuple(block_shape))
    raise UnsupportedSchemeError(f"granularity={granularity!r}: FP8 export supports "
                                 + ", ".join(repr(g) for g in FP8_GRANULARITIES))


def _check_fp8_shape(name: str, shape: tuple[int, ...], granularity: str,
                     block_shape: tuple[int, int]) -> None:
    if len(shape) != 2:
        raise InvalidShapeError(f"tensor {name!r} has shape {shape}; a Linear weight is 2-D")
    if granularity == "block" and shape[1] % block_shape[1]:
        raise InvalidShapeError(f"tensor {name!r} has {shape[1]} input features, not a multiple "
                                f"of the block width {block_shape[1]} (vLLM's block kernels need "
                                "whole blocks along the input); use --granularity channel")


def _scale_shape(shape: tuple[int, ...], granularity: str, block_shape) -> tuple[int, ...]:
    """The shape compressed-tensors registers for ``weight_scale``."""
    if granularity == "tensor":
        return (1,)
    if granularity == "channel":
        return (shape[0], 1)
    return (math.ceil(shape[0] / block_shape[0]), math.ceil(shape[1] / block_shape[1]))


def pack_fp8_weight(w: np.ndarray, granularity: str, name: str = "weight",
                    block_shape: tuple[int, int] = (128, 128),
                    scale_dtype: str = "float32") -> dict[str, np.ndarray]:
    """{"weight": uint8 E4M3 bit patterns, "weight_scale"} of a 2-D float weight, with the
    shapes compressed-tensors registers for the strategy. The float32 scale is rounded to
    ``scale_dtype`` (bfloat16 as uint16 bits) first and the codes are computed against the
    rounded scale, as the integer export does, so the loader's ``code * scale`` is gpuquant's."""
    from .ctensors import round_scale

    w = np.asarray(w, np.float32)
    _check_fp8_shape(name, w.shape, granularity, block_shape)
    cfg = fp8_config(granularity, block_shape)
    _, scale, _ = quantize_float(w, cfg)
    stored, values = round_scale(scale, scale_dtype, name)
    codes = fp8_codes(w, values.reshape(scale.shape), cfg)
    return {"weight": codes.astype(np.uint8),
            "weight_scale": stored.reshape(_scale_shape(w.shape, granularity, block_shape))}


@dataclasses.dataclass(frozen=True)
class FloatOptions:
    """What ``gpuquant export --scheme fp8`` does to each Linear weight (the fields the
    folder exporter reads are those of :class:`~gpuquant.export.ctensors.PackOptions`)."""

    scheme: str = "fp8"  # or "nvfp4" / "mxfp4" (ctensors_fp4.py; granularity then ignored)
    granularity: str = "channel"
    block_shape: tuple[int, int] = (128, 128)
    scale_dtype: str | None = None
    ignore: tuple[str, ...] = ("lm_head",)
    targets: str | None = None
    bits: int = 8
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.scheme not in ("fp8", "nvfp4", "mxfp4"):
            raise UnsupportedSchemeError(f"scheme={self.scheme!r}: float export supports "
                                         "'fp8', 'nvfp4' and 'mxfp4'")
        if self.scheme == "fp8":
            fp8_config(self.granularity, self.block_shape)
        object.__setattr__(self, "ignore", tuple(self.ignore))
        object.__setattr__(self, "block_shape", tuple(int(b) for b in self.block_shape))

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if self.scheme != "fp8":
            group = fp4.NVFP4_GROUP if self.scheme == "nvfp4" else fp4.MXFP4_GROUP
            return fp4.check_nvfp4_shape(name, shape, group)
        _check_fp8_shape(name, shape, self.granularity, self.block_shape)

    def entries(self, key: str, shape: tuple[int, ...], scale_tag: str) -> list:
        """The safetensors entries (name, dtype tag, shape) that replace weight ``key``."""
        if self.scheme != "fp8":
            return getattr(fp4, self.scheme + "_entries")(key, shape)
        return [(key, "F8_E4M3", tuple(shape)),
                (key + "_scale", scale_tag, _scale_shape(shape, self.granularity,
                                                         self.block_shape))]

    def arrays(self, w, scale_dtype: str, key: str) -> list[np.ndarray]:
        """The arrays of :meth:`entries`, in order (NumPy; a GPU array is copied to the host)."""
        from ..core.frameworks import host_copy

        if self.scheme != "fp8":
            return list(getattr(fp4, "pack_" + self.scheme + "_weight")(host_copy(w), key).values())
        out = pack_fp8_weight(host_copy(w), self.granularity, key, self.block_shape, scale_dtype)
        return [out["weight"], out["weight_scale"]]

    def quantization_config(self, ignore: list[str], targets: list[str]) -> dict:
        if self.scheme != "fp8":
            return getattr(fp4, self.scheme + "_quantization_config")(ignore, targets)
        return fp8_quantization_config(self.granularity, ignore, targets, self.block_shape)


def fp8_quantization_config(granularity: str, ignore: list[str], targets: list[str],
                            block_shape: tuple[int, int] = (128, 128)) -> dict:
    """config.json's ``quantization_config`` of a ``float-quantized`` FP8 export: FP8_DYNAMIC
    (static weights, dynamic per-token activations), or FP8_BLOCK for 2-D blocks."""
    weights = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": granularity,
               "dynamic": False}
    acts = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "token",
            "dynamic": True}
    if granularity == "block":
        weights["block_structure"] = list(block_shape)
        acts.update(strategy="group", group_size=int(block_shape[1]))
    return {"quant_method": "compressed-tensors", "format": "float-quantized",
            "quantization_status": "compressed", "ignore": ignore,
            "config_groups": {"group_0": {"targets": targets, "format": "float-quantized",
                                          "weights": weights, "input_activations": acts}}}
