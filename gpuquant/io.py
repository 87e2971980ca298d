"""Save and load quantized tensors as safetensors (docs/FORMAT.md).

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
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from .checkpoint.files import BF16, SafetensorsFile, is_shape, tag_of, write_safetensors
from .config import QuantConfig
from .core.frameworks import (
    FLOAT_DTYPES,
    TensorInfo,
    array_device,
    as_ndarray,
    bf16_bits_to_f32,
    framework_of,
)
from .core.layout import Layout
from .core.nonfinite import entry
from .errors import BackendUnavailableError, FormatError, QuantizationError
from .tensor import QuantizedTensor

__all__ = ["save", "load", "FORMAT_VERSION", "SUFFIXES", "suffixes_of", "to_host", "quantized_entries",
           "read_quantized", "described_tensors"]

FORMAT_VERSION = "1"
VERSION_KEY = "gpuquant.format_version"
TENSORS_KEY = "gpuquant.tensors"
SUFFIXES = (".qdata", ".scale", ".zero_point")


def to_host(a: Any, name: str = "a tensor to save") -> tuple[str, np.ndarray]:
    """(safetensors dtype tag, NumPy array) of any array; bfloat16 as raw bits."""
    framework = framework_of(a)
    if framework == "torch":
        import torch

        if a.device.type == "meta":
            raise BackendUnavailableError("a torch tensor on the meta device holds no values to "
                                          "save")
        a = a.detach().cpu().resolve_neg()  # NumPy cannot read the negative bit
        if a.dtype == torch.bfloat16:
            return BF16, a.view(torch.int16).numpy().view(np.uint16)
        a = a.numpy()
    elif framework == "cupy":
        a = a.get()
    a = as_ndarray(a, name)
    return tag_of(a.dtype), a


def suffixes_of(config: QuantConfig) -> tuple[str, ...]:
    """The stored tensors of a quantized NAME: SUFFIXES, or a float format's (gpuquant.formats.parts)."""
    if config.is_float:
        from .formats.parts import float_suffixes

        return float_suffixes(config)
    return SUFFIXES


def quantized_entries(name: str, qt: QuantizedTensor) -> list[tuple[str, str, np.ndarray]]:
    if qt.config.is_float:
        from .formats.parts import extras_of

        arrays = (qt.data, qt.scale, *extras_of(qt).values())
    else:
        arrays = (qt.data, qt.scale, qt.zero_point)
    return [(name + suffix, *to_host(arr)) for suffix, arr in zip(suffixes_of(qt.config), arrays)]


def quantized_metadata(qt: QuantizedTensor) -> dict[str, Any]:
    return {"config": qt.config.to_dict(), "shape": list(qt.shape), "dtype": qt.dtype}


@entry
def save(path: str | os.PathLike, tensors: Mapping[str, Any],
         metadata: Mapping[str, str] | None = None) -> None:
    """Write quantized tensors and plain arrays to one safetensors file, atomically.

    Raises OutputPathError when the folder of ``path`` does not exist (or
    ``path`` is a folder), FormatError past MAX_TENSORS stored tensors, and
    NonFiniteError for NaN/Inf that an earlier GPU quantize found.
    """
    path = _path(path)
    if not isinstance(tensors, Mapping):
        raise QuantizationError("tensors must be a mapping of name -> QuantizedTensor or array")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise QuantizationError(f"metadata must be a mapping of str -> str or None, got "
                                f"{type(metadata).__name__}")
    entries: list[tuple[str, str, np.ndarray]] = []
    described: dict[str, Any] = {}
    for name, value in tensors.items():
        if not isinstance(name, str) or not name:
            raise QuantizationError(f"tensor names must be non-empty strings, got {name!r}")
        if isinstance(value, QuantizedTensor):
            entries += quantized_entries(name, value)
            described[name] = quantized_metadata(value)
        else:
            entries.append((name, *to_host(value, f"tensors[{name!r}]")))
    counts = Counter(e[0] for e in entries)
    clash = sorted(n for n, c in counts.items() if c > 1)
    if clash:
        raise QuantizationError(f"tensor names collide in the file: {clash[:10]}")
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta[VERSION_KEY] = FORMAT_VERSION
    meta[TENSORS_KEY] = json.dumps(described, separators=(",", ":"))
    write_safetensors(path, entries, meta)


def described_tensors(f: SafetensorsFile) -> dict[str, Any]:
    """NAME -> {"config", "shape", "dtype"} of the file's quantized tensors, every entry
    checked against the stored arrays (FormatError otherwise); {} for a plain file."""
    described = _described_unchecked(f)
    for name, info in described.items():
        _checked_entry(f, name, info)
    return described


def _described_unchecked(f: SafetensorsFile) -> dict[str, Any]:
    meta = f.metadata
    if VERSION_KEY not in meta:
        if TENSORS_KEY in meta:
            raise FormatError(f"{f.path}: {TENSORS_KEY} metadata without {VERSION_KEY}")
        return {}
    if meta[VERSION_KEY] != FORMAT_VERSION:
        raise FormatError(f"{f.path}: gpuquant format version {meta[VERSION_KEY]!r} is not "
                          f"supported; this gpuquant reads version {FORMAT_VERSION!r}")
    if TENSORS_KEY not in meta:
        raise FormatError(f"{f.path}: {VERSION_KEY} is set but {TENSORS_KEY} is missing")
    try:
        described = json.loads(meta[TENSORS_KEY])
    except (ValueError, RecursionError) as exc:
        raise FormatError(f"{f.path}: {TENSORS_KEY} metadata is not JSON "
                          f"({str(exc)[:200]})") from None
    if not isinstance(described, dict):
        raise FormatError(f"{f.path}: {TENSORS_KEY} metadata must be a JSON object")
    return described


def _checked_entry(f: SafetensorsFile, name: str, info: Any):
    """(config, shape, dtype) of one described tensor whose three arrays fit it."""
    try:
        config = QuantConfig.from_dict(info["config"])
        raw_shape = info["shape"]
        if not is_shape(raw_shape):
            raise QuantizationError(f"shape {str(raw_shape)[:100]} is not a list of at most "
                                    "64 non-negative integers")
        shape, dtype = tuple(raw_shape), info["dtype"]
        if dtype not in FLOAT_DTYPES:
            raise QuantizationError(f"dtype {str(dtype)[:50]!r} is not one of {FLOAT_DTYPES}")
        expect = _expected(shape, config)
    except (QuantizationError, KeyError, TypeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{f.path}: tensor {name!r} has bad gpuquant metadata "
                          f"({str(exc)[:300]})") from None
    if name in f:
        raise FormatError(f"{f.path}: {name!r} is both a quantized tensor and a plain one")
    for suffix, (tag, want) in expect.items():
        key = name + suffix
        if key not in f:
            raise FormatError(f"{f.path}: quantized tensor {name!r} lacks {key!r}")
        if f.dtype_tag(key) != tag or f.shape(key) != tuple(want):
            raise FormatError(f"{f.path}: {key!r} is {f.dtype_tag(key)}{list(f.shape(key))}, "
                              f"expected {tag}{list(want)} for shape {list(shape)} and {config}")
    return config, shape, dtype


def _expected(shape: tuple[int, ...], config: QuantConfig) -> dict[str, tuple[str, tuple]]:
    """suffix -> (safetensors dtype tag, shape) of the stored tensors of one quantized tensor."""
    if config.is_float:
        from .formats.parts import expected_parts

        parts = expected_parts(shape, config).values()
        return {s: (tag_of(d), tuple(p)) for s, (d, p) in zip(suffixes_of(config), parts)}
    layout = Layout.of(shape, config)
    return {".qdata": (tag_of(config.storage_dtype), layout.packed_shape(config.bits)),
            ".scale": ("F32", layout.unit_shape), ".zero_point": ("I32", layout.unit_shape)}


def read_quantized(f: SafetensorsFile, name: str, info: Any, framework: str = "numpy",
                   device: Any = None) -> QuantizedTensor:
    """Rebuild one QuantizedTensor from its stored arrays, checking shapes and values."""
    config, shape, dtype = _checked_entry(f, name, info)
    arrays = [f.get(name + suffix) for suffix in suffixes_of(config)]
    extras: dict[str, Any] = {}
    if config.is_float:  # (data, scale, zero_point=None), then the named extra parts
        from .formats.parts import extra_names

        extras = dict(zip(extra_names(config), arrays[2:]))
        arrays = [arrays[0], arrays[1], None]
    try:  # checks the values on the host
        qt = QuantizedTensor(*arrays, shape, dtype, config, **extras)
    except QuantizationError as exc:
        raise FormatError(f"{f.path}: quantized tensor {name!r}: {exc}") from None
    if framework == "numpy":
        return qt
    arrays = [None if a is None else _to_torch(a, False, device) for a in arrays]
    extras = {k: _to_torch(a, False, device) for k, a in extras.items()}
    info = TensorInfo("torch", dtype, shape, array_device(arrays[0]))
    return QuantizedTensor(*arrays, shape, dtype, config, info, **extras)


def _torch():
    try:
        import torch
    except ImportError:
        raise BackendUnavailableError("framework='torch' needs PyTorch: pip install "
                                      "'gpuquant[torch]'") from None
    return torch


def _to_torch(arr: np.ndarray, bf16: bool, device: Any):
    torch = _torch()
    t = torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16) if bf16 else \
        torch.from_numpy(arr)
    return t if device is None else t.to(device)


def load(path: str | os.PathLike, framework: str = "numpy", device: Any = None) -> dict[str, Any]:
    """Read a file written by :func:`save`: name -> QuantizedTensor or array.

    Args:
        framework: "numpy" (default): NumPy arrays. Plain bfloat16 tensors are
            widened to float32 (exactly), and ``dequantize()`` of a quantized
            tensor whose original dtype is bfloat16 returns float32 values
            rounded to bfloat16, NumPy having no bfloat16. "torch": torch
            tensors (bfloat16 stays bfloat16); torch is imported only then.
        device: with "torch", where the tensors go ("cpu", "cuda:0", a
            torch.device); None keeps them on the CPU.

    Raises FormatError for truncated, foreign, inconsistent or unknown-version
    files, and BackendUnavailableError when torch is asked for but missing.
    """
    path = _path(path)
    if not isinstance(framework, str) or framework not in ("numpy", "torch"):
        raise QuantizationError(f"framework={framework!r} is not supported; accepted: "
                                "'numpy', 'torch'")
    if framework == "numpy" and not (device is None or isinstance(device, str) and device == "cpu"):
        raise QuantizationError(f"device={device!r} needs framework='torch'; NumPy arrays "
                                "live on the CPU")
    if framework == "torch":
        _check_device(device)
    with SafetensorsFile(path) as f:
        described = _described_unchecked(f)  # read_quantized checks each entry
        out: dict[str, Any] = {}
        owned = set()
        for name, info in described.items():
            out[name] = read_quantized(f, name, info, framework, device)
            owned.update(name + s for s in suffixes_of(out[name].config))
        for key in f.keys():
            if key not in owned:
                arr, bf16 = f.get(key), f.dtype_tag(key) == BF16
                if framework == "torch":
                    out[key] = _to_torch(arr, bf16, device)
                else:
                    out[key] = bf16_bits_to_f32(arr) if bf16 else arr
    return out


def _path(path: Any) -> str:
    try:
        text = os.fspath(path)
    except TypeError:
        text = None
    if not isinstance(text, str):  # bytes paths too: the messages and joins need str
        raise QuantizationError(f"path={path!r} must be a str or an os.PathLike of str")
    return text


def _check_device(device: Any) -> None:
    torch = _torch()
    if device is None:
        return
    try:
        torch.empty(0, device=device)
    except (RuntimeError, TypeError, AssertionError) as exc:
        raise BackendUnavailableError(f"device={device!r} cannot hold torch tensors here "
                                      f"({str(exc).splitlines()[0][:200]})") from None
