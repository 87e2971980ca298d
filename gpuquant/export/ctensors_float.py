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

import numpy as np

from ..config import QuantConfig
from ..errors import InvalidShapeError, UnsupportedSchemeError
from ..formats.reference import quantize_float

__all__ = ["FP8_GRANULARITIES", "fp8_config", "fp8_quantization_config", "pack_fp8_weight"]

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


def pack_fp8_weight(w: np.ndarray, granularity: str, name: str = "weight",
                    block_shape: tuple[int, int] = (128, 128)) -> dict[str, np.ndarray]:
    """{"weight": uint8 E4M3 bit patterns, "weight_scale": float32} of a 2-D float weight,
    with the shapes compressed-tensors registers for the strategy."""
    w = np.asarray(w, np.float32)
    if w.ndim != 2:
        raise InvalidShapeError(f"tensor {name!r} has shape {w.shape}; a Linear weight is 2-D")
    if granularity == "block" and w.shape[1] % block_shape[1]:
        raise InvalidShapeError(f"tensor {name!r} has {w.shape[1]} input features, not a multiple "
                                f"of the block width {block_shape[1]} (vLLM's block kernels need "
                                "whole blocks along the input); use --granularity channel")
    cfg = fp8_config(granularity, block_shape)
    codes, scale, _ = quantize_float(w, cfg)
    stored = scale.reshape({"tensor": (1,), "channel": (-1, 1)}.get(granularity, scale.shape))
    return {"weight": codes.astype(np.uint8), "weight_scale": stored.astype(np.float32)}


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
