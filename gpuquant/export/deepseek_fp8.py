"""One Linear weight in the DeepSeek-V3 FP8 block format, and the config that says so.

For a Linear module ``P`` (weight ``[out, in]``, both multiples of 128) the checkpoint holds
``P.weight`` (float8_e4m3fn bit patterns) and ``P.weight_scale_inv`` (float32
``[out / 128, in / 128]``). Despite its name, ``weight_scale_inv`` is the dequantization
multiplier: ``weight = code * scale_inv`` per 128x128 block (transformers'
``Fp8Dequantize``, DeepSeek's ``weight_dequant``); it is gpuquant's FP8 block scale
``amax / 448``. config.json says ``quant_method: fp8``, ``weight_block_size: [128, 128]``,
dynamic activations; transformers reads it as ``FineGrainedFP8Config`` (and vLLM as its
``fp8`` method). The codes and scales are :func:`~gpuquant.export.ctensors_float.pack_fp8_weight`'s
(gpuquant's NumPy reference), with the scale kept in float32 whatever the model's dtype.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import InvalidShapeError, UnsupportedSchemeError
from .ctensors_float import pack_fp8_weight

__all__ = ["DeepSeekOptions", "deepseek_quantization_config", "not_converted"]

BLOCK = (128, 128)


@dataclasses.dataclass(frozen=True)
class DeepSeekOptions:
    """What ``gpuquant export --format deepseek`` does to each Linear weight (the fields the
    folder exporter reads, as :class:`~gpuquant.export.ctensors_float.FloatOptions`)."""

    ignore: tuple[str, ...] = ("lm_head",)
    targets: str | None = None
    scheme: str = "fp8"
    granularity: str = "block"
    scale_dtype: str = "float32"
    bits: int = 8
    symmetric: bool = True

    def __post_init__(self) -> None:
        if (self.scheme, self.granularity) != ("fp8", "block"):
            raise UnsupportedSchemeError(
                f"scheme={self.scheme!r}, granularity={self.granularity!r}: the DeepSeek format "
                "holds FP8 E4M3 in 128x128 blocks (scheme 'fp8', granularity 'block')")
        if self.scale_dtype != "float32":
            raise UnsupportedSchemeError(f"scale_dtype={self.scale_dtype!r}: the DeepSeek "
                                         "format stores weight_scale_inv in float32")
        object.__setattr__(self, "ignore", tuple(self.ignore))

    def check_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if len(shape) != 2:
            raise InvalidShapeError(f"tensor {name!r} has shape {shape}; a Linear weight is 2-D")
        if shape[0] % BLOCK[0] or shape[1] % BLOCK[1]:
            raise InvalidShapeError(
                f"tensor {name!r} has shape {tuple(shape)}, not whole 128x128 blocks "
                "(transformers' dequantizing loader derives the block from the scale grid, so "
                "a ragged block would load wrong); leave it out with --ignore")

    def entries(self, key: str, shape: tuple[int, ...], scale_tag: str) -> list:
        """The safetensors entries (name, dtype tag, shape) that replace weight ``key``."""
        grid = (shape[0] // BLOCK[0], shape[1] // BLOCK[1])
        return [(key, "F8_E4M3", tuple(shape)), (key + "_scale_inv", "F32", grid)]

    def arrays(self, w, scale_dtype: str, key: str) -> list[np.ndarray]:
        """The arrays of :meth:`entries`, in order (a GPU array is copied to the host)."""
        from ..core.frameworks import host_copy

        out = pack_fp8_weight(host_copy(w), "block", key, BLOCK, "float32")
        return [out["weight"], out["weight_scale"]]

    def quantization_config(self, ignore: list[str], targets: list[str]) -> dict:
        return deepseek_quantization_config(not_converted(ignore, targets))


def not_converted(ignore: list[str], targets: list[str]) -> list[str]:
    """transformers' ``modules_to_not_convert`` (regular expressions matched from the start of
    a module name) of compressed-tensors-style ``ignore`` names and ``targets`` (["Linear"]
    or ["re:REGEX"]): every Linear module outside them stays a float Linear."""
    out = [entry[3:] if entry.startswith("re:") else entry for entry in ignore]
    for target in targets:
        if target.startswith("re:"):  # every module the regex does not match
            out.append(f"(?!(?:{target[3:]})).*")
    return out


def deepseek_quantization_config(modules_to_not_convert: list[str]) -> dict:
    """config.json's ``quantization_config``: DeepSeek-V3's, with the modules left in float."""
    return {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
            "weight_block_size": list(BLOCK), "modules_to_not_convert": modules_to_not_convert}
