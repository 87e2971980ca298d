"""``gpuquant inspect`` of the export formats: a GGUF file or a compressed-tensors folder.

Each quantized tensor is decoded in NumPy (GGUF blocks by ``gguf.quants``,
pack-quantized weights by unpacking the int32 words) and, with
``--reference``, compared with the original tensor: SQNR and max abs error.
"""

from __future__ import annotations

import json
import math
import os
import statistics

import numpy as np

from ..checkpoint.files import SafetensorsFile
from ..checkpoint.index import open_checkpoint
from ..core.frameworks import as_float
from ..core.pack_quantized import unpack32
from ..errors import QuantizationError
from ..metrics import error_sums

__all__ = ["inspect_export", "format_report", "dequantize_packed"]

_ITEMSIZE = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_GGUF_BLOCKS = ("Q", "MXFP4")  # the GGUF tensor types that are quantized blocks


def _is_gguf(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def _ct_config(path: str) -> dict | None:
    try:
        with open(os.path.join(path, "config.json")) as f:
            qc = json.load(f).get("quantization_config") or {}
    except (OSError, ValueError, AttributeError):
        return None
    return qc if qc.get("quant_method") == "compressed-tensors" else None


def _reference(path: str | None):
    """name -> float32 reference tensor, or None without --reference."""
    if path is None:
        return None
    where = {}
    for shard in open_checkpoint(path).shards:
        with SafetensorsFile(shard) as f:
            where.update({k: shard for k in f.keys()})

    def get(name: str) -> np.ndarray:
        if name not in where:
            raise QuantizationError(f"{path}: the reference has no tensor {name!r}")
        with SafetensorsFile(where[name]) as f:
            return as_float(f.get(name), f.dtype_tag(name)).astype(np.float32)

    return get


def _compare(row: dict, ref: np.ndarray, y: np.ndarray) -> None:
    signal, noise, max_err, _ = error_sums(ref.reshape(y.shape), y)
    row["sqnr_db"] = math.inf if noise == 0 else 10 * math.log10(signal / noise) \
        if signal else -math.inf
    row["max_abs_err"] = max_err


def inspect_export(path: str, reference: str | None = None) -> dict | None:
    """A report for a GGUF file or a compressed-tensors folder; None for anything else."""
    if _is_gguf(path):
        return _inspect_gguf(path, _reference(reference))
    if os.path.isdir(path) and _ct_config(path) is not None:
        return _inspect_ct(path, _ct_config(path), _reference(reference))
    return None


def _inspect_gguf(path: str, ref) -> dict:
    from .gguf_file import import_gguf

    lib = import_gguf()
    try:
        reader = lib.GGUFReader(path)
    except (ValueError, OSError, IndexError) as exc:
        raise QuantizationError(f"{path}: not a readable GGUF file ({exc})") from None
    rows, kinds = [], set()
    for t in reader.tensors:
        shape = [int(s) for s in reversed(t.shape.tolist())]
        kind = t.tensor_type.name
        kinds.add(kind)
        row = {"name": t.name, "shape": shape, "scheme": kind, "bytes": int(t.n_bytes),
               "original_bytes": int(t.n_elements) * 4}
        if ref is not None:
            original = ref(t.name)
            row["original_bytes"] = original.nbytes
            if kind.startswith((*_GGUF_BLOCKS, "F", "BF")):
                y = lib.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            else:  # integer tensors are stored as they are
                y = np.asarray(t.data).astype(np.float32)
            _compare(row, original, y.reshape(original.shape))
        rows.append(row)
    scheme = "/".join(sorted(k for k in kinds if k.startswith(_GGUF_BLOCKS))) or "none"
    return _totals({"format": "gguf", "scheme": scheme, "tensors": rows})


def dequantize_packed(f: SafetensorsFile, base: str, bits: int, symmetric: bool) -> np.ndarray:
    """float32 ``(q - zp) * scale`` of the pack-quantized weight ``base`` (e.g. "fc.weight")."""
    rows, cols = packed_shape(f, base)
    scale = as_float(f.get(base + "_scale"), f.dtype_tag(base + "_scale")).astype(np.float32)
    groups = scale.shape[-1] if scale.ndim == 2 and scale.shape[0] == rows else 0
    if groups == 0 or cols % groups:
        raise QuantizationError(f"{f.path}: {base}_scale has {groups} groups for {cols} columns")
    q = unpack32(f.get(base + "_packed"), bits, cols).astype(np.int32)
    if symmetric:
        zp = np.full((rows, groups), 1 << (bits - 1), np.int32)
    else:
        zp = unpack32(f.get(base + "_zero_point"), bits, rows, dim=0).astype(np.int32)
    diff = (q.reshape(rows, groups, -1) - zp[:, :, None]).astype(np.float32)
    return (diff * scale.reshape(rows, groups, 1)).reshape(rows, cols)


def packed_shape(f: SafetensorsFile, base: str) -> tuple[int, int]:
    """(rows, columns) of a pack-quantized weight from its ``_shape`` tensor, checked."""
    shape = f.get(base + "_shape") if base + "_shape" in f else np.zeros(0, np.int64)
    if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
        raise QuantizationError(f"{f.path}: {base}_shape must hold 2 non-negative integers "
                                f"(rows, columns), not {shape.tolist()}")
    return int(shape[0]), int(shape[1])


def _ct_weights(path: str, qc: dict) -> dict:
    """The ``weights`` quantization args of a compressed-tensors config, checked."""
    groups = qc.get("config_groups", {})
    if not isinstance(groups, dict) or not all(isinstance(g, dict) for g in groups.values()):
        raise QuantizationError(f"{path}: quantization_config.config_groups must be an object "
                                "of group name -> {\"weights\": ...}")
    weights = next(iter(groups.values()), {}).get("weights") or {}
    bits = weights.get("num_bits", 4) if isinstance(weights, dict) else None
    if type(bits) is not int or bits not in (4, 8) or \
            not isinstance(weights.get("symmetric", True), bool):
        raise QuantizationError(f"{path}: quantization_config weights need num_bits 4 or 8 (an "
                                "integer) and symmetric true or false")
    return weights


def _inspect_ct(path: str, qc: dict, ref) -> dict:
    weights = _ct_weights(path, qc)
    bits, symmetric = weights.get("num_bits", 4), weights.get("symmetric", True)
    gran = weights.get("strategy", "?")
    scheme = f"int{bits} {'sym' if symmetric else 'asym'} {gran}" + \
        (f"{weights.get('group_size')}" if gran == "group" else "")
    rows = []
    for shard in open_checkpoint(path).shards:
        with SafetensorsFile(shard) as f:
            keys = f.keys()
            packed = {k[: -len("_packed")] for k in keys if k.endswith("_packed")}
            owned = {b + s for b in packed for s in ("_packed", "_scale", "_shape", "_zero_point")}
            for base in sorted(packed):
                rows_, cols = packed_shape(f, base)
                stored = sum(f.nbytes(base + s) for s in ("_packed", "_scale", "_shape",
                                                         "_zero_point") if base + s in f)
                row = {"name": base, "shape": [rows_, cols], "scheme": scheme, "bytes": stored,
                       "original_bytes": rows_ * cols * _ITEMSIZE.get(
                           f.dtype_tag(base + "_scale"), 4)}
                if ref is not None:
                    original = ref(base)
                    row["original_bytes"] = original.nbytes
                    _compare(row, original, dequantize_packed(f, base, bits, symmetric))
                rows.append(row)
            for key in keys:
                if key not in owned:
                    rows.append({"name": key, "shape": list(f.shape(key)), "scheme": "-",
                                 "bytes": f.nbytes(key), "original_bytes": f.nbytes(key)})
    return _totals({"format": "compressed-tensors pack-quantized", "scheme": scheme,
                    "tensors": rows})


def _totals(report: dict) -> dict:
    before = sum(r["original_bytes"] for r in report["tensors"])
    after = sum(r["bytes"] for r in report["tensors"])
    sqnr = [r["sqnr_db"] for r in report["tensors"] if "sqnr_db" in r]
    report.update(total_original_bytes=before, total_bytes=after,
                  compression_ratio=before / after if after else math.inf,
                  sqnr_min_db=min(sqnr) if sqnr else None,
                  sqnr_median_db=statistics.median(sqnr) if sqnr else None)
    return report


def format_report(report: dict) -> str:
    """The table of an export: full names, and the SQNR summary with --reference."""
    has_ref = any("sqnr_db" in r for r in report["tensors"])
    width = max([len("name")] + [len(r["name"]) for r in report["tensors"]])
    head = f"{'name':<{width}} {'shape':<14} {'scheme':<18} {'bytes':>10}"
    head += f" {'SQNR dB':>9} {'max abs err':>12}" if has_ref else ""
    lines = [f"{report['format']}: {report['scheme']}", head, "-" * len(head)]
    for r in report["tensors"]:
        line = (f"{r['name']:<{width}} {'x'.join(map(str, r['shape'])):<14} "
                f"{r['scheme'][:18]:<18} {r['bytes']:>10}")
        if "sqnr_db" in r:
            line += f" {r['sqnr_db']:9.2f} {r['max_abs_err']:12.6f}"
        lines.append(line)
    lines.append("-" * len(head))
    summary = (f"total: {len(report['tensors'])} tensor(s); {report['total_original_bytes']} "
               f"bytes -> {report['total_bytes']} bytes, compression "
               f"{report['compression_ratio']:.2f}x")
    if report["sqnr_min_db"] is not None:
        summary += (f"; SQNR min {report['sqnr_min_db']:.2f} dB, "
                    f"median {report['sqnr_median_db']:.2f} dB")
    lines.append(summary)
    return "\n".join(lines)
