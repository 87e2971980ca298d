"""One Linear weight in compressed-tensors' "nvfp4-pack-quantized" format, and its config.

For a Linear module ``P`` (weight ``[out, in]``, ``in`` a multiple of 16) the checkpoint holds
``P.weight_packed`` (uint8 ``[out, in / 2]``, FP4 E2M1 codes, the even element in the low
nibble), ``P.weight_scale`` (float8_e4m3fn bit patterns ``[out, in / 16]``) and
``P.weight_global_scale`` (float32 ``[1]``, ``448 * 6 / amax``). The loader dequantizes
``code * scale / global_scale``. Everything is gpuquant's NumPy reference (quantize_float under
``QuantConfig.nvfp4()``), which follows compressed-tensors' rounding bit for bit
(tests/test_export_fp8.py compares the bytes with its NVFP4PackedCompressor).
"""

from __future__ import annotations

import numpy as np

from ..config import QuantConfig
from ..errors import InvalidShapeError
from ..formats.reference import quantize_float

__all__ = ["MXFP4_GROUP", "mxfp4_entries", "mxfp4_quantization_config", "pack_mxfp4_weight",
           "NVFP4_GROUP", "check_nvfp4_shape", "nvfp4_entries", "nvfp4_quantization_config",
           "pack_nvfp4_weight"]

NVFP4_GROUP = 16


def check_nvfp4_shape(name: str, shape: tuple[int, ...], group: int = NVFP4_GROUP) -> None:
    if len(shape) != 2:
        raise InvalidShapeError(f"tensor {name!r} has shape {shape}; a Linear weight is 2-D")
    if shape[1] % group:
        raise InvalidShapeError(f"tensor {name!r} has {shape[1]} input features, not a multiple "
                                f"of the FP4 group of {group}")


def pack_nvfp4_weight(w: np.ndarray, name: str = "weight") -> dict[str, np.ndarray]:
    """{"weight_packed", "weight_scale" (E4M3 bits), "weight_global_scale"} of a 2-D weight."""
    w = np.asarray(w, np.float32)
    check_nvfp4_shape(name, w.shape)
    codes, scale, gs = quantize_float(w, QuantConfig.nvfp4())
    return {"weight_packed": np.asarray(codes, np.uint8), "weight_scale": np.asarray(scale, np.uint8),
            "weight_global_scale": np.asarray(gs, np.float32).reshape(1)}


def nvfp4_entries(key: str, shape: tuple[int, ...]) -> list:
    rows, cols = shape
    return [(key + "_packed", "U8", (rows, cols // 2)),
            (key + "_scale", "F8_E4M3", (rows, cols // NVFP4_GROUP)),
            (key + "_global_scale", "F32", (1,))]


def nvfp4_quantization_config(ignore: list[str], targets: list[str]) -> dict:
    """The ``NVFP4A16`` preset: static FP4 weights in groups of 16 with a tensor global scale."""
    weights = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": NVFP4_GROUP,
               "strategy": "tensor_group", "dynamic": False, "scale_dtype": "torch.float8_e4m3fn"}
    return {"quant_method": "compressed-tensors", "format": "nvfp4-pack-quantized",
            "quantization_status": "compressed", "ignore": ignore,
            "config_groups": {"group_0": {"targets": targets, "format": "nvfp4-pack-quantized",
                                          "weights": weights}}}


MXFP4_GROUP = 32


def pack_mxfp4_weight(w: np.ndarray, name: str = "weight",
                      scale_rule: str = "floor") -> dict[str, np.ndarray]:
    """{"weight_packed", "weight_scale" (E8M0 bytes)} of a 2-D weight (``mxfp4-pack-quantized``)."""
    w = np.asarray(w, np.float32)
    check_nvfp4_shape(name, w.shape, MXFP4_GROUP)
    codes, scale, _ = quantize_float(w, QuantConfig.mxfp4(scale_rule=scale_rule))
    return {"weight_packed": np.asarray(codes, np.uint8), "weight_scale": np.asarray(scale, np.uint8)}


def mxfp4_entries(key: str, shape: tuple[int, ...]) -> list:
    rows, cols = shape
    return [(key + "_packed", "U8", (rows, cols // 2)),
            (key + "_scale", "U8", (rows, cols // MXFP4_GROUP))]


def mxfp4_quantization_config(ignore: list[str], targets: list[str]) -> dict:
    """The ``MXFP4A16`` preset: static FP4 weights in groups of 32 with E8M0 scales."""
    weights = {"num_bits": 4, "type": "float", "symmetric": True, "group_size": MXFP4_GROUP,
               "strategy": "group", "dynamic": False, "scale_dtype": "torch.uint8"}
    return {"quant_method": "compressed-tensors", "format": "mxfp4-pack-quantized",
            "quantization_status": "compressed", "ignore": ignore,
            "config_groups": {"group_0": {"targets": targets, "format": "mxfp4-pack-quantized",
                                          "weights": weights}}}
