"""gq.export_model: a model holding QuantizedLinear modules -> the compressed-tensors folder
``gpuquant export`` writes (pack-quantized int32 words, scales, shapes, zero points).

The codes are the modules' own (round-to-nearest, HQQ or GPTQ alike): nothing is
calibrated again. Scales are stored in float32 (the file then loads to exactly
the modules' dequantized weights in a float32 model); ``scale_dtype="model"``
stores them in the model's dtype when every scale is exact there, as
``gpuquant export`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np

from ..checkpoint.output import staged_folder
from ..core.frameworks import host_copy
from ..core.pack_quantized import pack32, words_from_codes_bytes
from ..core.packing import pack_int4, unpack_int4
from ..errors import QuantizationError, UnsupportedSchemeError
from ..export.ctensors import PackOptions, quantization_config

__all__ = ["export_model", "pack_options_of"]

_SUFFIXES = ("qdata", "scale", "zero_point", "_extra_state")
_WEIGHT_FILES = (".safetensors", ".safetensors.index.json", ".bin", ".bin.index.json")


def pack_options_of(config, ignore, activations: str | None = None) -> PackOptions:
    """The PackOptions of ``gpuquant export`` that a QuantConfig corresponds to."""
    gran = config.granularity.value
    if config.is_float:
        raise UnsupportedSchemeError(
            f"{config.describe()}: export_model writes integer pack-quantized weights; export "
            "the float formats from the original checkpoint with `gpuquant export --scheme "
            "fp8|nvfp4|mxfp4` (docs/EXPORT.md)")
    if config.bits not in (4, 8) or gran not in ("group", "channel") or (
            gran == "channel" and config.axis not in (0, -2)):
        raise UnsupportedSchemeError(
            f"{config.describe()}: compressed-tensors pack-quantized holds int4/int8 weights per "
            "group or per output channel (axis 0)")
    return PackOptions(scheme=config.scheme.value, granularity=gran,
                       group_size=config.group_size or 128, symmetric=config.symmetric,
                       scale_dtype="float32", ignore=tuple(ignore), activations=activations,
                       scale_rule="half_range" if config.scale_rule == "half_range" else "max")


def _low_first_bytes(module) -> np.ndarray:
    """The module's codes as stored bytes, int4 repacked low nibble first."""
    data = host_copy(module.qdata)
    cfg = module.config
    if cfg.bits == 4 and cfg.nibble_order != "low_first":
        codes = unpack_int4(data, module.in_features, signed=cfg.symmetric,
                            nibble_order=cfg.nibble_order)
        data = pack_int4(codes, nibble_order="low_first", signed=cfg.symmetric)
    return data


def _packed(module, activations: str | None) -> dict[str, np.ndarray]:
    cfg = module.config
    rows, cols = module.out_features, module.in_features
    if cfg.granularity.value == "group" and cols % cfg.group_size:
        raise QuantizationError(f"{cols} input features are not a multiple of group_size "
                                f"{cfg.group_size}; compressed-tensors needs whole groups")
    scale = host_copy(module.scale).astype(np.float32).reshape(rows, -1)
    if activations is not None:  # int-quantized (symmetric: PackOptions checked it)
        codes = host_copy(module.qdata)
        if cfg.bits == 4:
            codes = unpack_int4(codes, cols, signed=True, nibble_order=cfg.nibble_order)
        return {"weight": np.ascontiguousarray(codes, np.int8).reshape(rows, cols),
                "weight_scale": scale}
    words = words_from_codes_bytes(_low_first_bytes(module), cfg.bits, cfg.symmetric, cols)
    out = {"weight_packed": words, "weight_scale": scale,
           "weight_shape": np.array([rows, cols], np.int64)}
    if not cfg.symmetric:
        zp = host_copy(module.zero_point).reshape(rows, -1)
        out["weight_zero_point"] = pack32(zp, cfg.bits, dim=0)
    return out


def _state_dict(model, quantized: dict, activations: str | None) -> dict:
    import torch

    state = {}
    for key, value in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if module in quantized and leaf in _SUFFIXES:
            continue
        state[key] = value
    for name, module in quantized.items():
        for suffix, array in _packed(module, activations).items():
            state[f"{name}.{suffix}"] = torch.from_numpy(np.ascontiguousarray(array))
    return state


def _copy_side_files(source: str, stage: str) -> None:
    """Files of the source folder that save_pretrained does not write (tokenizer, ...)."""
    written = set(os.listdir(stage))
    for name in sorted(os.listdir(source)):
        src = os.path.join(source, name)
        if name.startswith(".") or name in written or name.endswith(_WEIGHT_FILES):
            continue
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(stage, name), symlinks=True)
        else:
            shutil.copy2(src, os.path.join(stage, name))


def export_model(model, out_dir: str, *, force: bool = False, copy_from: str | None = None,
                 activations: str | None = None) -> dict:
    """Write ``model`` (a transformers model whose Linear layers gq.quantize_model replaced)
    as a compressed-tensors pack-quantized folder, loadable by transformers and vLLM.

    Every QuantizedLinear must share one config (int4/int8, per group or per output
    channel). ``copy_from``: the model's source folder, whose other files (tokenizer,
    generation config, ...) are copied as ``gpuquant export`` does. ``force`` replaces
    an existing output. ``activations`` ("int8" / "fp8") writes the int-quantized layout of the
    W8A8 / W4AFP8 presets, as ``gpuquant export --activations``.
    Returns {"quantized": n, "config": QuantConfig, "seconds": s}.
    """
    from ..nn import QuantizedLinear

    start = time.perf_counter()
    if not hasattr(model, "save_pretrained") or not hasattr(model, "config"):
        raise QuantizationError(f"model must be a transformers PreTrainedModel, got "
                                f"{type(model).__name__}")
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    if not quantized:
        raise QuantizationError("the model holds no QuantizedLinear: run gq.quantize_model first")
    configs = {m.config.replace(calibration="minmax", nibble_order="low_first")
               for m in quantized.values()}
    if len(configs) > 1:
        raise UnsupportedSchemeError("export_model writes one config for every layer; the "
                                     "model's layers have " + ", ".join(sorted(
                                         c.describe() for c in configs)))
    config = next(iter(quantized.values())).config
    linears = {n for n, m in model.named_modules() if type(m).__name__ == "Linear"}
    options = pack_options_of(config, sorted(linears), activations)
    qc = quantization_config(options, sorted(linears), ["Linear"])
    state = _state_dict(model, quantized, activations)
    with staged_folder(out_dir, [copy_from] if copy_from else [], force=force) as stage:
        model.save_pretrained(stage, state_dict=state, safe_serialization=True)
        path = os.path.join(stage, "config.json")
        with open(path) as f:
            written = json.load(f)
        written["quantization_config"] = qc
        with open(path, "w") as f:
            json.dump(written, f, indent=2)
        if copy_from is not None:
            _copy_side_files(copy_from, stage)
    return {"quantized": len(quantized), "config": config, "seconds": time.perf_counter() - start}
