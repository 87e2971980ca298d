"""``gpuquant inspect`` of the export formats: a GGUF file or a compressed-tensors folder.

Each quantized tensor is decoded in NumPy (GGUF blocks by ``gguf.quants``, the folders'
weights by export/inspect_folders.py) and, with
``--reference``, compared with the original tensor: SQNR and max abs error.
"""

from __future__ import annotations

import math
import os
import statistics

import numpy as np

from ..checkpoint.files import SafetensorsFile
from ..checkpoint.index import open_checkpoint
from ..core.frameworks import as_float
from ..errors import QuantizationError
from ..metrics import error_sums
from .inspect_folders import dequantize_packed, describe, folder_config, folder_tensors

__all__ = ["inspect_export", "format_report", "dequantize_packed"]

_GGUF_BLOCKS = ("Q", "MXFP4")  # the GGUF tensor types that are quantized blocks


def _is_gguf(path: str) -> bool:
    if not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


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
    """A report for a GGUF file, a compressed-tensors or a DeepSeek FP8 folder; None for
    anything else."""
    if _is_gguf(path):
        return _inspect_gguf(path, _reference(reference))
    qc = folder_config(path) if os.path.isdir(path) else None
    if qc is not None:
        return _inspect_folder(path, qc, _reference(reference))
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


def _inspect_folder(path: str, qc: dict, ref) -> dict:
    """A compressed-tensors or DeepSeek FP8 folder (export/inspect_folders.py)."""
    fmt, scheme = describe(path, qc)
    rows = []
    for row, values in folder_tensors(path, qc):
        if values is not None and ref is not None:
            original = ref(row["name"])
            row["original_bytes"] = original.nbytes
            _compare(row, original, values())
        rows.append(row)
    return _totals({"format": fmt, "scheme": scheme, "tensors": rows})


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
