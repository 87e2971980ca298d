"""The work behind ``gpuquant quantize``, ``dequantize`` and ``inspect``."""

from __future__ import annotations

import fnmatch
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .arrays import f32_to_bf16_bits
from .checkpoint import as_float, open_checkpoint, write_output
from .config import QuantConfig
from .errors import QuantizationError
from .io import (
    FORMAT_VERSION,
    SUFFIXES,
    TENSORS_KEY,
    VERSION_KEY,
    described_tensors,
    read_quantized,
    to_host,
)
from .layout import Layout
from .metrics import error_sums
from .quantize import quantize
from .safetensors_file import DTYPES, SafetensorsFile, tag_of, write_safetensors_stream

__all__ = ["run_quantize", "run_dequantize", "run_inspect"]

FLOAT_TAGS = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
OUT_TAGS = {"float16": "F16", "bfloat16": "BF16", "float32": "F32", "float64": "F64"}


class Progress:
    """A tqdm bar over tensors with bytes/s, silent off a terminal or with --quiet."""

    def __init__(self, total: int, quiet: bool):
        self.bar = None
        if not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="B", unit_scale=True, file=sys.stderr)
            except ImportError:
                pass

    def step(self, name: str, nbytes: int) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(name[-40:])
            self.bar.update(nbytes)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _selected(name: str, include: list[str], exclude: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in include) and \
        not any(fnmatch.fnmatchcase(name, g) for g in exclude)


def _device(choice: str) -> Callable[[np.ndarray], Any] | None:
    """None for the CPU, else a function moving NumPy arrays to the GPU (CuPy or torch)."""
    if choice == "cpu":
        return None
    try:
        from .devices import device_converter

        convert = device_converter()
    except QuantizationError:
        convert = None
    if convert is None and choice == "cuda":
        raise QuantizationError("--device cuda: no working GPU (needs CuPy or torch with CUDA, "
                                "and Triton: pip install 'gpuquant[gpu]')")
    return convert


# --------------------------------------------------------------------- quantize
def run_quantize(args) -> dict:
    checkpoint = open_checkpoint(args.input)
    config = QuantConfig(scheme=args.scheme, granularity=args.granularity,
                         group_size=args.group_size if args.granularity == "group" else None,
                         axis=args.axis, symmetric=args.symmetric,
                         calibration=args.calibration_value)
    to_device = _device(args.device)
    include, exclude = args.include or ["*"], args.exclude or []
    stats = {"quantized": 0, "kept": 0, "bytes_in": 0, "bytes_out": 0, "seconds": 0.0,
             "read_s": 0.0, "compute_s": 0.0}
    start = time.perf_counter()
    sizes = [sum(f.nbytes(k) for k in f.keys()) for _, f in checkpoint.files()]
    progress = Progress(sum(sizes), args.quiet)

    def plan(f: SafetensorsFile):
        entries, work, described = [], [], {}
        for key in f.keys():
            tag, shape = f.dtype_tag(key), f.shape(key)
            if tag in FLOAT_TAGS and len(shape) >= 2 and _selected(key, include, exclude):
                try:
                    layout = Layout.of(shape, config)
                except QuantizationError as exc:
                    raise QuantizationError(f"{f.path}: tensor {key!r}: {exc}") from None
                entries += [(key + ".qdata", tag_of(config.storage_dtype),
                             layout.packed_shape(config.bits)),
                            (key + ".scale", "F32", layout.unit_shape),
                            (key + ".zero_point", "I32", layout.unit_shape)]
                described[key] = {"config": config.to_dict(), "shape": list(shape),
                                  "dtype": FLOAT_TAGS[tag]}
                work.append((key, True))
            else:
                entries.append((key, tag, shape))
                work.append((key, False))
        names = [e[0] for e in entries]
        if len(set(names)) != len(names):
            clash = sorted({n for n in names if names.count(n) > 1})
            raise QuantizationError(f"{f.path}: quantized names collide with tensors already "
                                    f"there: {clash[:5]}; --exclude the tensors behind them")
        return entries, work, described

    def produce(f: SafetensorsFile, work):
        for key, quantized in work:
            t0 = time.perf_counter()
            raw = f.get(key)
            t1 = time.perf_counter()
            stats["read_s"] += t1 - t0
            stats["bytes_in"] += raw.nbytes
            if not quantized:
                stats["kept"] += 1
                stats["bytes_out"] += raw.nbytes
                progress.step(key, raw.nbytes)
                yield raw
                continue
            x = as_float(raw, f.dtype_tag(key))
            x = to_device(x) if to_device is not None else x
            qt = quantize(x, config)
            qt.check_finite()
            arrays = [to_host(a)[1] for a in (qt.data, qt.scale, qt.zero_point)]
            stats["compute_s"] += time.perf_counter() - t1
            stats["quantized"] += 1
            stats["bytes_out"] += sum(a.nbytes for a in arrays)
            progress.step(key, raw.nbytes)
            yield from arrays

    def write_shard(name: str, f: SafetensorsFile, target: str) -> dict[str, str]:
        entries, work, described = plan(f)
        meta = {k: v for k, v in f.metadata.items() if not k.startswith("gpuquant.")}
        meta[VERSION_KEY] = FORMAT_VERSION
        meta[TENSORS_KEY] = json.dumps(described, separators=(",", ":"))
        write_safetensors_stream(target, entries, produce(f, work), meta)
        return {entry[0]: name for entry in entries}

    try:
        write_output(args.output, checkpoint, args.force, write_shard)
    finally:
        progress.close()
    stats["seconds"] = time.perf_counter() - start
    unmatched = [g for g in include + exclude if g != "*" and not any(
        fnmatch.fnmatchcase(k, g) for _, f in checkpoint.files() for k in f.keys())]
    stats["unmatched_globs"] = unmatched
    return stats


# ------------------------------------------------------------------- dequantize
def run_dequantize(args) -> dict:
    checkpoint = open_checkpoint(args.input)
    stats = {"dequantized": 0, "kept": 0}

    def write_shard(name: str, f: SafetensorsFile, target: str) -> dict[str, str]:
        described = described_tensors(f)
        owned = {key + s for key in described for s in SUFFIXES}
        entries, work = [], []
        for key in f.keys():
            if key in owned:
                continue
            entries.append((key, f.dtype_tag(key), f.shape(key)))
            work.append((key, None))
        for key, info in described.items():
            dtype = args.dtype or info["dtype"]
            tag = OUT_TAGS.get(dtype)
            if tag is None:
                raise QuantizationError(f"{f.path}: tensor {key!r} was {dtype}; pass --dtype "
                                        "float16, bfloat16 or float32")
            entries.append((key, tag, tuple(info["shape"])))
            work.append((key, dtype))

        def produce():
            for key, dtype in work:
                if dtype is None:
                    stats["kept"] += 1
                    yield f.get(key)
                    continue
                y = read_quantized(f, key, described[key]).dequantize(dtype="float32")
                stats["dequantized"] += 1
                if dtype == "bfloat16":
                    yield f32_to_bf16_bits(y)
                else:
                    yield y.astype(dtype)

        meta = {k: v for k, v in f.metadata.items() if not k.startswith("gpuquant.")}
        write_safetensors_stream(target, entries, produce(), meta)
        return {e[0]: name for e in entries}

    write_output(args.output, checkpoint, args.force, write_shard)
    return stats


# ---------------------------------------------------------------------- inspect
def run_inspect(args) -> dict:
    checkpoint = open_checkpoint(args.input)
    reference = _reference_index(args.reference) if args.reference else None
    rows = []
    for _, f in checkpoint.files():
        described = described_tensors(f)
        owned = {key + s for key in described for s in SUFFIXES}
        for key, info in described.items():
            config = QuantConfig.from_dict(info["config"])
            shape = tuple(info["shape"])
            stored = sum(f.nbytes(key + s) for s in SUFFIXES)
            original = math.prod(shape) * DTYPES[OUT_TAGS.get(info["dtype"], "F64")].itemsize
            row = {"name": key, "shape": list(shape), "dtype": info["dtype"],
                   "scheme": config.scheme.value, "granularity": _granularity(config),
                   "symmetric": config.symmetric, "bytes": stored, "original_bytes": original}
            if reference is not None:
                ref = reference(key)
                y = read_quantized(f, key, info).dequantize(dtype="float32")
                signal, noise, max_err, _ = error_sums(ref.astype(np.float32), y)
                row["sqnr_db"] = math.inf if noise == 0 else 10 * math.log10(signal / noise)
                row["max_abs_err"] = max_err
            rows.append(row)
        for key in f.keys():
            if key in owned:
                continue
            tag, nbytes = f.dtype_tag(key), f.nbytes(key)
            row = {"name": key, "shape": list(f.shape(key)), "dtype": FLOAT_TAGS.get(tag, tag),
                   "scheme": "-", "granularity": "kept", "symmetric": None, "bytes": nbytes,
                   "original_bytes": nbytes}
            if reference is not None:
                row["identical"] = bool(np.array_equal(reference(key, raw=True), f.get(key)))
            rows.append(row)
    before = sum(r["original_bytes"] for r in rows)
    after = sum(r["bytes"] for r in rows)
    return {"tensors": rows, "total_original_bytes": before, "total_bytes": after,
            "compression_ratio": before / after if after else math.inf}


def _granularity(config: QuantConfig) -> str:
    gran = config.granularity.value
    if gran == "group":
        return f"group{config.group_size}"
    if gran == "channel":
        return f"channel(axis={config.axis})"
    return gran


def _reference_index(path: str):
    """A function name -> the reference tensor (float, or raw bits with raw=True)."""
    checkpoint = open_checkpoint(path)
    where = {}
    for shard in checkpoint.shards:
        with SafetensorsFile(shard) as f:
            for key in f.keys():
                where[key] = shard

    def get(key: str, raw: bool = False):
        if key not in where:
            raise QuantizationError(f"{path}: the reference has no tensor {key!r}")
        with SafetensorsFile(where[key]) as f:
            value = f.get(key)
            return value if raw else as_float(value, f.dtype_tag(key))

    return get


def format_inspect(report: dict) -> str:
    has_ref = any("sqnr_db" in r or "identical" in r for r in report["tensors"])
    head = f"{'name':<40} {'shape':<18} {'scheme':<6} {'granularity':<18} {'bytes':>12}"
    if has_ref:
        head += f" {'SQNR dB':>9} {'max abs err':>12}"
    lines = [head, "-" * len(head)]
    for r in report["tensors"]:
        line = (f"{r['name'][:40]:<40} {'x'.join(map(str, r['shape'])):<18} {r['scheme']:<6} "
                f"{r['granularity']:<18} {r['bytes']:>12}")
        if "sqnr_db" in r:
            line += f" {r['sqnr_db']:9.2f} {r['max_abs_err']:12.6f}"
        elif "identical" in r:
            line += f" {'identical' if r['identical'] else 'DIFFERENT':>22}"
        lines.append(line)
    lines.append("-" * len(head))
    lines.append(f"total: {report['total_original_bytes']} bytes -> {report['total_bytes']} bytes, "
                 f"compression {report['compression_ratio']:.2f}x")
    return "\n".join(lines)
