"""The work behind ``gpuquant quantize``, ``dequantize`` and ``inspect`` on whole checkpoints.

Each output file's header is planned from shapes alone, then tensors are
read one at a time, converted and streamed out, so peak memory stays near a
few times the largest tensor. The stored form of a quantized tensor (names,
dtypes, metadata) comes from gpuquant.io; nothing here spells it out again.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import QuantConfig
from ..core.frameworks import as_float, f32_to_bf16_bits
from ..core.layout import Layout
from ..core.qparams import check_user_qparams
from ..errors import EmptyTensorError, FormatError, NonFiniteError, QuantizationError
from ..io import (
    FORMAT_VERSION,
    SUFFIXES,
    TENSORS_KEY,
    VERSION_KEY,
    described_tensors,
    quantized_entries,
    quantized_metadata,
    read_quantized,
    suffixes_of,
)
from ..metrics import error_sums
from ..quantize import quantize
from ..tensor import QuantizedTensor
from .files import BF16, DTYPES, SafetensorsFile, tag_of, write_safetensors_stream
from .index import open_checkpoint
from .job import write_checkpoint
from .output import check_output

__all__ = ["quantize_checkpoint", "dequantize_checkpoint", "inspect_checkpoint"]

Step = Callable[[str, int], None]


def float_name(tag: str) -> str | None:
    """"float16" etc. for a float safetensors tag, None for other tags."""
    if tag == BF16:
        return "bfloat16"
    return DTYPES[tag].name if tag in DTYPES and DTYPES[tag].kind == "f" else None


def float_tag(name: str) -> str:
    return BF16 if name == "bfloat16" else tag_of(np.dtype(name))


def checked_described(f: SafetensorsFile) -> dict[str, Any]:
    """io.described_tensors, refusing metadata that disagrees with the file's tensors."""
    described = described_tensors(f)
    for name, info in described.items():
        try:
            config = QuantConfig.from_dict(info["config"])
            float_tag(str(info["dtype"]))
            if not config.is_float:
                Layout.of(tuple(int(s) for s in info["shape"]), config)
        except (QuantizationError, KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{f.path}: {TENSORS_KEY} entry {name!r} is bad ({exc})") from None
        missing = [name + s for s in suffixes_of(config) if name + s not in f]
        if missing:
            raise FormatError(f"{f.path}: {TENSORS_KEY} describes {name!r} but the file lacks "
                              f"{missing}; the file is damaged")
    if VERSION_KEY in f.metadata:
        stem = len(SUFFIXES[0])
        for key in f.keys():
            base = key[:-stem]
            if key.endswith(SUFFIXES[0]) and base not in described and \
                    all(base + s in f for s in SUFFIXES):
                raise FormatError(f"{f.path}: {base!r} is stored quantized but {TENSORS_KEY} "
                                  "does not describe it; the metadata is damaged")
    return described


def file_metadata(metadata: dict[str, str], described: dict[str, Any] | None) -> dict[str, str]:
    """An input file's metadata without gpuquant's keys, plus those of ``described``."""
    meta = {k: v for k, v in metadata.items() if not k.startswith("gpuquant.")}
    if described is not None:
        meta[VERSION_KEY] = FORMAT_VERSION
        meta[TENSORS_KEY] = json.dumps(described, separators=(",", ":"))
    return meta


def _tensor_error(f: SafetensorsFile, key: str, exc: QuantizationError) -> QuantizationError:
    """The same error, naming the file and tensor, with the CLI's own options as advice."""
    text = str(exc)
    if isinstance(exc, EmptyTensorError):
        text += "; --exclude it to pass it through"
    if isinstance(exc, NonFiniteError):
        text = text.replace("pass ignore_nonfinite=True", "pass --ignore-nonfinite") \
            if "ignore_nonfinite=True" in text else text + "; or pass --ignore-nonfinite"
    return type(exc)(f"{f.path}: tensor {key!r}: {text}")


def _planned(f: SafetensorsFile, key: str, config: QuantConfig) -> QuantizedTensor:
    """A QuantizedTensor of the right shapes and dtypes holding no data (broadcast zeros)."""
    shape = f.shape(key)
    try:
        if config.is_float:  # gpuquant.formats.parts: codes, scale (+ extra parts), no zero point
            from ..formats.parts import expected_parts

            parts = {k: np.broadcast_to(np.zeros((), d), p)
                     for k, (d, p) in expected_parts(shape, config).items()}
            return QuantizedTensor(parts.pop("data"), parts.pop("scale"), None, shape,
                                   float_name(f.dtype_tag(key)), config, **parts)
        layout = Layout.of(shape, config)
        codes = np.broadcast_to(np.zeros((), config.storage_dtype), layout.packed_shape(config.bits))
        scale = np.broadcast_to(np.ones((), np.float32), layout.unit_shape)
        zero_point = np.broadcast_to(np.zeros((), np.int32), layout.unit_shape)
        return QuantizedTensor(codes, scale, zero_point, shape, float_name(f.dtype_tag(key)),
                               config)
    except QuantizationError as exc:
        raise _tensor_error(f, key, exc) from None


def refuse_quantized(f: SafetensorsFile) -> None:
    described = checked_described(f)
    if described:
        schemes = sorted({QuantConfig.from_dict(i["config"]).describe()
                          for i in described.values()})
        raise QuantizationError(f"{f.path}: already quantized by gpuquant ({', '.join(schemes[:3])}"
                                f"{', ...' if len(schemes) > 3 else ''}); quantize the original "
                                "checkpoint, or dequantize this one first")


class Plan:
    """One output shard: header entries, what to do with each tensor, the metadata."""

    def __init__(self, f: SafetensorsFile, config: QuantConfig, include, exclude):
        refuse_quantized(f)
        self.entries: list[tuple[str, str, tuple[int, ...]]] = []
        self.work: list[tuple[str, list | None]] = []
        self.described: dict[str, Any] = {}
        self.grew = 0
        for key in f.keys():
            planned = None
            if float_name(f.dtype_tag(key)) and len(f.shape(key)) >= 2 and \
                    _selected(key, include, exclude):
                planned = _planned(f, key, config)
                if planned.size_bytes > planned.original_bytes:
                    self.grew, planned = self.grew + 1, None
            if planned is None:
                self.entries.append((key, f.dtype_tag(key), f.shape(key)))
                self.work.append((key, None))
                continue
            stored = [(n, tag, a.shape) for n, tag, a in quantized_entries(key, planned)]
            self.entries += stored
            self.work.append((key, stored))
            self.described[key] = quantized_metadata(planned)
        names = [e[0] for e in self.entries]
        if len(set(names)) != len(names):
            clash = sorted({n for n in names if names.count(n) > 1})
            raise QuantizationError(f"{f.path}: quantized names collide with tensors already "
                                    f"there: {clash[:5]}; --exclude the tensors behind them")


def _selected(name: str, include: list[str], exclude: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in include) and \
        not any(fnmatch.fnmatchcase(name, g) for g in exclude)


def _quantize_one(f: SafetensorsFile, key: str, raw: np.ndarray, config: QuantConfig,
                  to_device) -> list[tuple[str, str, np.ndarray]]:
    x = as_float(raw, f.dtype_tag(key))
    x = to_device(x) if to_device is not None else x
    try:
        qt = quantize(x, config)
        qt.check_finite()
    except QuantizationError as exc:
        raise _tensor_error(f, key, exc) from None
    return quantized_entries(key, qt)


class Producer:
    """Reads, quantizes and yields the stored arrays of one tensor at a time, counting."""

    def __init__(self, config: QuantConfig, to_device=None, step: Step | None = None):
        self.config, self.to_device, self.step = config, to_device, step
        self.stats = {"quantized": 0, "kept": 0, "bytes_in": 0, "bytes_out": 0, "read_s": 0.0,
                      "compute_s": 0.0}

    def arrays(self, f: SafetensorsFile, key: str, stored: list | None):
        """The arrays of ``key`` (``stored``: its planned quantized entries, None to keep it)."""
        stats = self.stats
        t0 = time.perf_counter()
        raw = f.get(key)
        t1 = time.perf_counter()
        stats["read_s"] += t1 - t0
        stats["bytes_in"] += raw.nbytes
        arrays = [raw] if stored is None else \
            _quantize_one(f, key, raw, self.config, self.to_device)
        if stored is not None:
            got = [(n, tag, a.shape) for n, tag, a in arrays]
            if got != stored:  # the header is already written: never write other bytes
                raise QuantizationError(f"{f.path}: tensor {key!r} quantized to {got}, "
                                        f"planned {stored}")
            arrays = [a for _, _, a in arrays]
            stats["compute_s"] += time.perf_counter() - t1
        stats["quantized" if stored is not None else "kept"] += 1
        stats["bytes_out"] += sum(a.nbytes for a in arrays)
        if self.step is not None:
            self.step(key, raw.nbytes)
        return arrays


def unmatched_globs(checkpoint, include: list[str], exclude: list[str]) -> list[str]:
    keys = [k for _, f in checkpoint.files() for k in f.keys()]
    return [g for g in include + exclude if g != "*" and
            not any(fnmatch.fnmatchcase(k, g) for k in keys)]


def quantize_checkpoint(src: str, out: str, config: QuantConfig, *, include=None, exclude=None,
                        to_device=None, force: bool = False, step: Step | None = None) -> dict:
    """Quantize every selected float tensor of 2+ dimensions; the rest passes through.

    A tensor whose quantized form would be larger than itself is kept as is
    (counted in ``grew``). Returns counts, byte totals, timings and the
    ``--include``/``--exclude`` globs that matched nothing.
    """
    checkpoint = open_checkpoint(src)
    include, exclude = include or ["*"], exclude or []
    plans = [Plan(f, config, include, exclude) for _, f in checkpoint.files()]
    producer = Producer(config, to_device, step)
    start = time.perf_counter()

    def produce(f: SafetensorsFile, plan: Plan):
        for key, stored in plan.work:
            yield from producer.arrays(f, key, stored)

    plan_of = dict(zip(checkpoint.shards, plans))

    def write_shard(name: str, f: SafetensorsFile, target: str) -> dict[str, str]:
        plan = plan_of[f.path]
        write_safetensors_stream(target, plan.entries, produce(f, plan),
                                 file_metadata(f.metadata, plan.described))
        return {entry[0]: name for entry in plan.entries}

    write_checkpoint(out, checkpoint, force, write_shard)
    stats = dict(producer.stats, grew=sum(p.grew for p in plans))
    stats["seconds"] = time.perf_counter() - start
    stats["unmatched_globs"] = unmatched_globs(checkpoint, include, exclude)
    return stats


def dequantize_checkpoint(src: str, out: str, dtype: str | None = None,
                          force: bool = False) -> dict:
    """Write a plain checkpoint: each quantized tensor in ``dtype`` (default: its original)."""
    checkpoint = open_checkpoint(src)
    stats = {"dequantized": 0, "kept": 0}
    check_output(out, checkpoint.inputs, force, folder=checkpoint.sharded,  # the input is never
                 names=[os.path.basename(s) for s in checkpoint.shards])  # the output: first
    if not any(checked_described(f) for _, f in checkpoint.files()):
        raise QuantizationError(f"{src}: nothing to dequantize: no tensor was quantized by "
                                f"gpuquant; {out} was not written")

    def write_shard(name: str, f: SafetensorsFile, target: str) -> dict[str, str]:
        described = checked_described(f)
        owned = {key + s for key, info in described.items() for s in _suffixes(info)}
        work = [(key, f.dtype_tag(key), f.shape(key), None) for key in f.keys()
                if key not in owned]
        for key, info in described.items():
            want = dtype or info["dtype"]
            if want not in ("float16", "bfloat16", "float32", "float64"):
                raise QuantizationError(f"{f.path}: tensor {key!r} was {want}; pass --dtype "
                                        "float16, bfloat16 or float32")
            work.append((key, float_tag(want), tuple(info["shape"]), want))

        def produce():
            for key, _, _, want in work:
                if want is None:
                    stats["kept"] += 1
                    yield f.get(key)
                    continue
                y = read_quantized(f, key, described[key]).dequantize(dtype="float32")
                stats["dequantized"] += 1
                yield f32_to_bf16_bits(y) if want == "bfloat16" else y.astype(want)

        entries = [(key, tag, shape) for key, tag, shape, _ in work]
        write_safetensors_stream(target, entries, produce(), file_metadata(f.metadata, None))
        return {e[0]: name for e in entries}

    write_checkpoint(out, checkpoint, force, write_shard)
    return stats


def _quantized_row(f: SafetensorsFile, key: str, info: dict, reference) -> dict:
    config = QuantConfig.from_dict(info["config"])
    shape = [int(s) for s in info["shape"]]
    row = {"name": key, "shape": shape, "dtype": info["dtype"], "scheme": config.scheme.value,
           "granularity": granularity_label(config),
           "symmetric": None if config.is_float else config.symmetric,
           "bytes": sum(f.nbytes(key + s) for s in suffixes_of(config)),
           "original_bytes": math.prod(shape) * DTYPES[float_tag(info["dtype"])].itemsize}
    try:  # the qparams are small: check their values even without a reference
        if not config.is_float:  # (float formats: non-finite scales are part of the contract)
            check_user_qparams(f.get(key + SUFFIXES[1]), f.get(key + SUFFIXES[2]), config.qmin,
                               config.qmax, prefix=f"{key}: stored ")
    except QuantizationError as exc:
        raise FormatError(f"{f.path}: quantized tensor {key!r}: {exc}") from None
    if reference is not None:
        _errors(row, f, reference(key), read_quantized(f, key, info).dequantize(dtype="float32"))
    return row


def _errors(row: dict, f: SafetensorsFile, ref: np.ndarray, y: np.ndarray) -> None:
    """SQNR and max abs error of ``y`` against the reference, into ``row``."""
    try:
        signal, noise, max_err, _ = error_sums(ref.astype(np.float32), y)
    except QuantizationError as exc:
        raise QuantizationError(f"{f.path}: tensor {row['name']!r} against the reference: "
                                f"{exc}") from None
    # as metrics.sqnr: +inf for an exact copy, -inf for noise on a zero signal
    row["sqnr_db"] = math.inf if noise == 0 else -math.inf if signal == 0 else \
        10 * math.log10(signal / noise)
    row["max_abs_err"] = max_err


def _kept_row(f: SafetensorsFile, key: str, reference) -> dict:
    """A tensor stored as it is: identical to the reference, or (a float that differs, as in
    a dequantized file) its SQNR and max abs error."""
    tag, nbytes = f.dtype_tag(key), f.nbytes(key)
    row = {"name": key, "shape": list(f.shape(key)), "dtype": float_name(tag) or tag,
           "scheme": "-", "granularity": "kept", "symmetric": None, "bytes": nbytes,
           "original_bytes": nbytes}
    if reference is not None:
        row["identical"] = bool(np.array_equal(reference(key, raw=True), f.get(key)))
        if not row["identical"] and float_name(tag):
            _errors(row, f, reference(key), as_float(f.get(key), tag).astype(np.float32))
    return row


def inspect_checkpoint(src: str, reference_path: str | None = None) -> dict:
    """One row per tensor (stored bytes, and errors against ``reference_path``) and totals."""
    checkpoint = open_checkpoint(src)
    reference = _reference_index(reference_path) if reference_path else None
    rows = []
    for _, f in checkpoint.files():
        described = checked_described(f)
        owned = {key + s for key, info in described.items() for s in _suffixes(info)}
        rows += [_quantized_row(f, key, info, reference) for key, info in described.items()]
        rows += [_kept_row(f, key, reference) for key in f.keys() if key not in owned]
    before = sum(r["original_bytes"] for r in rows)
    after = sum(r["bytes"] for r in rows)
    sqnr = [r["sqnr_db"] for r in rows if "sqnr_db" in r]
    return {"tensors": rows, "quantized": sum(r["scheme"] != "-" for r in rows),
            "kept": sum(r["scheme"] == "-" for r in rows),
            "total_original_bytes": before, "total_bytes": after,
            "compression_ratio": before / after if after else None,  # nothing stored
            "sqnr_min_db": min(sqnr) if sqnr else None,
            "sqnr_median_db": statistics.median(sqnr) if sqnr else None}


def _suffixes(info: dict) -> tuple[str, ...]:
    return suffixes_of(QuantConfig.from_dict(info["config"]))


def granularity_label(config: QuantConfig) -> str:
    if config.is_float:  # e.g. group16/e4m3, group32/e8m0/rceil, block128x128/float32
        return config.describe().split("/", 1)[1].replace("/compressed_tensors", "")
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
    for shard, (_, f) in zip(checkpoint.shards, checkpoint.files()):
        for key in f.keys():
            where[key] = shard

    def get(key: str, raw: bool = False):
        if key not in where:
            raise QuantizationError(f"{path}: the reference has no tensor {key!r}")
        with SafetensorsFile(where[key]) as f:
            value = f.get(key)
            return value if raw else as_float(value, f.dtype_tag(key))

    return get
