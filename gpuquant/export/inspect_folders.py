"""The quantized model folders ``gpuquant inspect`` reads: which tensors are quantized weights,
and their float32 values.

compressed-tensors folders (``quant_method: compressed-tensors``) in the formats gpuquant
writes: pack-quantized (int32 words), int-quantized (int8 codes: W8A8, W4AFP8),
float-quantized (FP8 E4M3 per tensor, channel or block), nvfp4-pack-quantized and
mxfp4-pack-quantized; and DeepSeek FP8 block folders (``quant_method: fp8``,
``weight_scale_inv``). The float formats are decoded by gpuquant's own NumPy reference
(``formats.reference.dequantize_float``), the integer ones as ``(q - zp) * scale``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator

import numpy as np

from ..checkpoint.files import SafetensorsFile
from ..checkpoint.index import open_checkpoint
from ..config import QuantConfig
from ..core.frameworks import as_float
from ..core.pack_quantized import unpack32
from ..errors import QuantizationError
from ..formats.reference import dequantize_float, unit_shape
from .ctensors_float import fp8_config

__all__ = ["folder_config", "folder_tensors", "describe", "dequantize_packed", "packed_shape"]

_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
# format -> the suffixes of one quantized weight's tensors ("" is the weight's own name), and
# the suffix whose presence marks a weight
_SUFFIXES = {"pack-quantized": (("_packed", "_scale", "_shape", "_zero_point"), "_packed"),
             "int-quantized": (("", "_scale", "_zero_point"), "_scale"),
             "float-quantized": (("", "_scale"), "_scale"),
             "nvfp4-pack-quantized": (("_packed", "_scale", "_global_scale"), "_packed"),
             "mxfp4-pack-quantized": (("_packed", "_scale"), "_packed"),
             "deepseek": (("", "_scale_inv"), "_scale_inv")}
_FP4 = {"nvfp4-pack-quantized": QuantConfig.nvfp4, "mxfp4-pack-quantized": QuantConfig.mxfp4}


def folder_config(path: str) -> dict | None:
    """The ``quantization_config`` of a compressed-tensors or DeepSeek FP8 folder, else None."""
    try:
        with open(os.path.join(path, "config.json")) as f:
            qc = json.load(f).get("quantization_config") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return qc if isinstance(qc, dict) and qc.get("quant_method") in (
        "compressed-tensors", "fp8") else None


def _format(path: str, qc: dict) -> str:
    if qc.get("quant_method") == "fp8":
        return "deepseek"
    fmt = qc.get("format", "pack-quantized")
    if fmt not in _SUFFIXES:
        raise QuantizationError(f"{path}: compressed-tensors format {fmt!r}; inspect reads "
                                + ", ".join(k for k in _SUFFIXES if k != "deepseek"))
    return fmt


def _group(path: str, qc: dict) -> dict:
    """The first config group of a compressed-tensors config, checked."""
    groups = qc.get("config_groups", {})
    if not isinstance(groups, dict) or not all(isinstance(g, dict) for g in groups.values()):
        raise QuantizationError(f"{path}: quantization_config.config_groups must be an object "
                                "of group name -> {\"weights\": ...}")
    return next(iter(groups.values()), {})


def _int_weights(path: str, qc: dict) -> dict:
    """The ``weights`` quantization args of an integer compressed-tensors config, checked."""
    weights = _group(path, qc).get("weights") or {}
    bits = weights.get("num_bits", 4) if isinstance(weights, dict) else None
    if type(bits) is not int or bits not in (4, 8) or \
            not isinstance(weights.get("symmetric", True), bool):
        raise QuantizationError(f"{path}: quantization_config weights need num_bits 4 or 8 (an "
                                "integer) and symmetric true or false")
    return weights


def _fp8_cfg(path: str, fmt: str, qc: dict) -> QuantConfig:
    if fmt == "deepseek":
        block = qc.get("weight_block_size")
        strategy = "block" if block is not None else "tensor"
    else:
        weights = _group(path, qc).get("weights") or {}
        strategy = weights.get("strategy", "tensor") if isinstance(weights, dict) else None
        block = weights.get("block_structure") if isinstance(weights, dict) else None
    block = (128, 128) if block is None else block
    if not (isinstance(block, list | tuple) and len(block) == 2 and
            all(type(b) is int and b > 0 for b in block)):
        raise QuantizationError(f"{path}: the weight block is {block!r}; give 2 positive "
                                "integers")
    try:
        return fp8_config(strategy, tuple(block))
    except QuantizationError as exc:
        raise QuantizationError(f"{path}: {exc}") from None


def _fp8_name(cfg: QuantConfig) -> str:
    """"fp8 tensor", "fp8 channel" or "fp8 block128x128"."""
    gran = cfg.granularity.value
    return f"fp8 {gran}" + ("{}x{}".format(*cfg.block_shape) if gran == "block" else "")


def describe(path: str, qc: dict) -> tuple[str, str]:
    """(format, scheme) of the folder's report."""
    fmt = _format(path, qc)
    if fmt == "deepseek":
        return "DeepSeek FP8 (quant_method fp8)", _fp8_name(_fp8_cfg(path, fmt, qc))
    if fmt in _FP4:
        return f"compressed-tensors {fmt}", fmt.split("-")[0]
    if fmt == "float-quantized":
        scheme = _fp8_name(_fp8_cfg(path, fmt, qc))
    else:
        w = _int_weights(path, qc)
        gran = w.get("strategy", "?")
        scheme = f"int{w.get('num_bits', 4)} {'sym' if w.get('symmetric', True) else 'asym'} " \
                 f"{gran}" + (f"{w.get('group_size')}" if gran == "group" else "")
    acts = _group(path, qc).get("input_activations")
    if isinstance(acts, dict):
        scheme += f" (activations {acts.get('type')}{acts.get('num_bits')} " \
                  f"{acts.get('strategy')}{' dynamic' if acts.get('dynamic') else ''})"
    return f"compressed-tensors {fmt}", scheme


def folder_tensors(path: str, qc: dict) -> Iterator[tuple[dict, Callable | None]]:
    """(report row, its float32 values as a function or None) for every tensor of the folder:
    one row per quantized weight (named as in the original model), one per other tensor. The
    function reads the open shard: call it before taking the next row. Scale shapes are
    checked against the weight's from the headers."""
    fmt = _format(path, qc)
    suffixes, mark = _SUFFIXES[fmt]
    scheme = describe(path, qc)[1].split(" (")[0]
    for shard in open_checkpoint(path, fp8=True).shards:
        with SafetensorsFile(shard, fp8=True) as f:
            keys = f.keys()
            bases = sorted(k[: -len(mark)] for k in keys if k.endswith(mark)
                           and (mark != "_scale" or k[: -len(mark)] in f))
            for base in bases:
                shape = _shape(f, base, fmt)
                _check_scale(path, f, base, shape, fmt, qc)
                scale_tag = f.dtype_tag(base + "_scale" if base + "_scale" in f else base
                                        + mark)
                row = {"name": base, "shape": list(shape), "scheme": scheme,
                       "bytes": sum(f.nbytes(base + s) for s in suffixes if base + s in f),
                       "original_bytes": int(np.prod(shape)) * _ITEMSIZE.get(scale_tag, 4)}
                yield row, (lambda b=base, s=shape: _decode(path, f, b, s, fmt, qc))
            owned = {b + s for b in bases for s in suffixes}
            for key in keys:
                if key not in owned:
                    yield ({"name": key, "shape": list(f.shape(key)), "scheme": "-",
                            "bytes": f.nbytes(key), "original_bytes": f.nbytes(key)}, None)


def _shape(f: SafetensorsFile, base: str, fmt: str) -> tuple[int, ...]:
    if fmt == "pack-quantized":
        return packed_shape(f, base)
    shape = f.shape(base + "_packed" if fmt in _FP4 else base)
    if len(shape) != 2:
        raise QuantizationError(f"{f.path}: {base} has shape {shape}; a Linear weight is 2-D")
    return (shape[0], 2 * shape[1]) if fmt in _FP4 else shape


def _check_scale(path: str, f: SafetensorsFile, base: str, shape, fmt: str, qc: dict) -> None:
    """The scale of a float-format weight holds one value per unit of gpuquant's config."""
    if fmt in ("pack-quantized", "int-quantized"):
        _groups(f, base, shape)
        return
    cfg = _FP4[fmt]() if fmt in _FP4 else _fp8_cfg(path, fmt, qc)
    key = base + ("_scale_inv" if fmt == "deepseek" else "_scale")
    want = unit_shape(tuple(shape), cfg)
    if len(shape) != 2 or int(np.prod(f.shape(key))) != int(np.prod(want)):
        raise QuantizationError(f"{f.path}: {key} has shape {f.shape(key)}; a {tuple(shape)} "
                                f"weight under {cfg.describe()} has {want}")


def _decode(path: str, f: SafetensorsFile, base: str, shape, fmt: str, qc: dict) -> np.ndarray:
    """float32 values of the quantized weight ``base`` of a folder in format ``fmt``."""
    if fmt == "pack-quantized":
        w = _int_weights(path, qc)
        return dequantize_packed(f, base, w.get("num_bits", 4), w.get("symmetric", True))
    if fmt == "int-quantized":
        q = f.get(base).astype(np.int32)
        if base + "_zero_point" in f:
            q = q - np.repeat(f.get(base + "_zero_point").astype(np.int32),
                              shape[1] // _groups(f, base, shape), axis=1)
        return _grouped(f, base, q, shape)
    if fmt in _FP4:
        cfg = _FP4[fmt]()
        gs = f.get(base + "_global_scale").reshape(-1)[0] if fmt.startswith("nv") else None
        return _float(f, base, f.get(base + "_packed"), f.get(base + "_scale"), gs, cfg, shape)
    cfg = _fp8_cfg(path, fmt, qc)
    scale_key = base + ("_scale_inv" if fmt == "deepseek" else "_scale")
    scale = as_float(f.get(scale_key), f.dtype_tag(scale_key)).astype(np.float32)
    return _float(f, base, f.get(base), scale, None, cfg, shape)


def _float(f: SafetensorsFile, base: str, codes, scale, gs, cfg, shape) -> np.ndarray:
    """gpuquant's float dequantization, the scale reshaped to gpuquant's unit shape."""
    if codes.dtype != np.uint8:
        raise QuantizationError(f"{f.path}: {base} holds {codes.dtype}; FP8 / FP4 codes are "
                                "bytes")
    return dequantize_float(codes, scale.reshape(unit_shape(tuple(shape), cfg)), gs, cfg, shape)


def _groups(f: SafetensorsFile, base: str, shape) -> int:
    scale = f.shape(base + "_scale")
    groups = scale[-1] if len(scale) == 2 and scale[0] == shape[0] else 0
    if groups == 0 or shape[1] % groups:
        raise QuantizationError(f"{f.path}: {base}_scale has {groups} groups for {shape[1]} "
                                "columns")
    return groups


def _grouped(f: SafetensorsFile, base: str, diff: np.ndarray, shape) -> np.ndarray:
    """float32 ``diff * scale``, one scale per group of each row."""
    rows, cols = shape
    groups = _groups(f, base, shape)
    scale = as_float(f.get(base + "_scale"), f.dtype_tag(base + "_scale")).astype(np.float32)
    out = diff.reshape(rows, groups, -1).astype(np.float32) * scale.reshape(rows, groups, 1)
    return out.reshape(rows, cols)


def dequantize_packed(f: SafetensorsFile, base: str, bits: int, symmetric: bool) -> np.ndarray:
    """float32 ``(q - zp) * scale`` of the pack-quantized weight ``base`` (e.g. "fc.weight")."""
    rows, cols = packed_shape(f, base)
    groups = _groups(f, base, (rows, cols))
    q = unpack32(f.get(base + "_packed"), bits, cols).astype(np.int32)
    if symmetric:
        zp = np.full((rows, groups), 1 << (bits - 1), np.int32)
    else:
        zp = unpack32(f.get(base + "_zero_point"), bits, rows, dim=0).astype(np.int32)
    return _grouped(f, base, q - np.repeat(zp, cols // groups, axis=1), (rows, cols))


def packed_shape(f: SafetensorsFile, base: str) -> tuple[int, int]:
    """(rows, columns) of a pack-quantized weight from its ``_shape`` tensor, checked."""
    shape = f.get(base + "_shape") if base + "_shape" in f else np.zeros(0, np.int64)
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise QuantizationError(f"{f.path}: {base}_shape must hold 2 non-negative integers "
                                f"(rows, columns), not {shape.tolist()}")
    return int(shape[0]), int(shape[1])
