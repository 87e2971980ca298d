"""Save and load quantized tensors as safetensors (DESIGN.md section 3).

A quantized tensor NAME is stored as three tensors, ``NAME.qdata``,
``NAME.scale`` (F32) and ``NAME.zero_point`` (I32). The file's metadata holds
``gpuquant.format_version`` ("1") and ``gpuquant.tensors``, a JSON object
mapping each NAME to its config (``QuantConfig.to_dict``), original shape and
dtype. Plain arrays are stored under their own name. docs/FORMAT.md has the
details for other tools.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .arrays import bf16_bits_to_f32, framework_of
from .config import QuantConfig
from .errors import FormatError, QuantizationError
from .layout import Layout
from .nonfinite import raise_ready
from .safetensors_file import BF16, SafetensorsFile, tag_of, write_safetensors
from .tensor import QuantizedTensor

__all__ = ["save", "load", "FORMAT_VERSION", "SUFFIXES", "to_host", "quantized_entries",
           "read_quantized", "described_tensors"]

FORMAT_VERSION = "1"
VERSION_KEY = "gpuquant.format_version"
TENSORS_KEY = "gpuquant.tensors"
SUFFIXES = (".qdata", ".scale", ".zero_point")


def to_host(a: Any) -> tuple[str, np.ndarray]:
    """(safetensors dtype tag, NumPy array) of any array; bfloat16 as raw bits."""
    framework = framework_of(a)
    if framework == "torch":
        import torch

        a = a.detach().cpu()
        if a.dtype == torch.bfloat16:
            return BF16, a.view(torch.int16).numpy().view(np.uint16)
        a = a.numpy()
    elif framework == "cupy":
        a = a.get()
    a = np.asarray(a)
    return tag_of(a.dtype), a


def quantized_entries(name: str, qt: QuantizedTensor) -> list[tuple[str, str, np.ndarray]]:
    return [(name + suffix, *to_host(arr))
            for suffix, arr in zip(SUFFIXES, (qt.data, qt.scale, qt.zero_point))]


def quantized_metadata(qt: QuantizedTensor) -> dict[str, Any]:
    return {"config": qt.config.to_dict(), "shape": list(qt.shape), "dtype": qt.dtype}


def save(path: str | os.PathLike, tensors: Mapping[str, Any],
         metadata: Mapping[str, str] | None = None) -> None:
    """Write quantized tensors and plain arrays to one safetensors file, atomically."""
    raise_ready()
    if not isinstance(tensors, Mapping):
        raise QuantizationError("tensors must be a mapping of name -> QuantizedTensor or array")
    entries: list[tuple[str, str, np.ndarray]] = []
    described: dict[str, Any] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise QuantizationError(f"tensor names must be non-empty strings, got {name!r}")
        if isinstance(value, QuantizedTensor):
            entries += quantized_entries(name, value)
            described[name] = quantized_metadata(value)
        else:
            entries.append((name, *to_host(value)))
    names = [e[0] for e in entries]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise QuantizationError(f"tensor names collide in the file: {clash}")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[VERSION_KEY] = FORMAT_VERSION
    meta[TENSORS_KEY] = json.dumps(described, separators=(",", ":"))
    write_safetensors(path, entries, meta)


def described_tensors(f: SafetensorsFile) -> dict[str, Any]:
    meta = f.metadata
    if VERSION_KEY not in meta:
        return {}
    if meta[VERSION_KEY] != FORMAT_VERSION:
        raise FormatError(f"{f.path}: gpuquant format version {meta[VERSION_KEY]!r} is not "
                          f"supported; this gpuquant reads version {FORMAT_VERSION!r}")
    try:
        described = json.loads(meta.get(TENSORS_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise FormatError(f"{f.path}: {TENSORS_KEY} metadata is not JSON ({exc})") from None
    if not isinstance(described, dict):
        raise FormatError(f"{f.path}: {TENSORS_KEY} metadata must be a JSON object")
    return described


def read_quantized(f: SafetensorsFile, name: str, info: Any) -> QuantizedTensor:
    """Rebuild one QuantizedTensor from its three stored arrays, checking every shape."""
    try:
        config = QuantConfig.from_dict(info["config"])
        shape, dtype = tuple(int(s) for s in info["shape"]), str(info["dtype"])
        layout = Layout.of(shape, config)
    except (QuantizationError, KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{f.path}: tensor {name!r} has bad gpuquant metadata ({exc})") from None
    expect = {
        ".qdata": (tag_of(config.storage_dtype), layout.packed_shape(config.bits)),
        ".scale": ("F32", layout.unit_shape),
        ".zero_point": ("I32", layout.unit_shape),
    }
    arrays = []
    for suffix, (tag, want) in expect.items():
        key = name + suffix
        if key not in f:
            raise FormatError(f"{f.path}: quantized tensor {name!r} lacks {key!r}")
        if f.dtype_tag(key) != tag or f.shape(key) != tuple(want):
            raise FormatError(f"{f.path}: {key!r} is {f.dtype_tag(key)}{list(f.shape(key))}, "
                              f"expected {tag}{list(want)} for shape {list(shape)} and {config}")
        arrays.append(f.get(key))
    return QuantizedTensor(*arrays, shape, dtype, config)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a file written by :func:`save`: name -> QuantizedTensor or NumPy array.

    Plain bfloat16 tensors are widened to float32 (exactly), NumPy having no
    bfloat16. Raises FormatError for truncated, foreign or unknown-version files.
    """
    with SafetensorsFile(path) as f:
        described = described_tensors(f)
        out: dict[str, Any] = {}
        owned = set()
        for name, info in described.items():
            out[name] = read_quantized(f, name, info)
            owned.update(name + s for s in SUFFIXES)
        for key in f.keys():
            if key not in owned:
                arr = f.get(key)
                out[key] = bf16_bits_to_f32(arr) if f.dtype_tag(key) == BF16 else arr
    return out
