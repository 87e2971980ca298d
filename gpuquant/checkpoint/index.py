"""A checkpoint on disk: one safetensors file, or shards with a model.safetensors.index.json;
and the plan of new shards (sizes, names, which rank writes which).

Reading checks the index before any shard is opened: every weight_map path
must stay inside the index's folder, and no two shards may share a file name
(outputs keep shard file names side by side in one folder). Outputs are
written by gpuquant.checkpoint.output, which never touches the input.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator

from ..errors import FormatError, QuantizationError
from .files import SafetensorsFile
from .output import INDEX_NAME

__all__ = ["Checkpoint", "open_checkpoint", "INDEX_NAME", "write_index", "parse_size",
           "plan_shards", "shard_names", "assign_shards"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


@dataclasses.dataclass
class Checkpoint:
    """The shard files of a checkpoint, in order, the index (if any) and its own metadata."""

    path: str
    shards: list[str]
    sharded: bool
    index_metadata: dict
    index: str | None = None

    def files(self) -> Iterator[tuple[str, SafetensorsFile]]:
        """(output file name, open file) for each shard, one open at a time."""
        for shard in self.shards:
            with SafetensorsFile(shard) as f:
                yield os.path.basename(shard), f

    @property
    def folder(self) -> str | None:
        """The folder holding the shards (None for a single file)."""
        if not self.sharded:
            return None
        return os.path.dirname(os.path.abspath(self.index)) if self.index else self.path

    @property
    def inputs(self) -> list[str]:
        """Every file and folder this checkpoint is read from: what no output may replace."""
        return self.shards + ([self.index] if self.index else []) + (
            [self.folder] if self.folder else [])


def _load_index(index_path: str) -> dict:
    try:
        with open(index_path, encoding="utf-8") as f:
            index = json.load(f)
    except FileNotFoundError:
        raise FormatError(f"{index_path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as exc:
        raise FormatError(f"{index_path}: not a safetensors index ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise FormatError(f"{index_path}: not a safetensors index (needs a non-empty "
                          "\"weight_map\" object of tensor name -> shard file)")
    if not all(isinstance(v, str) and v for v in weight_map.values()):
        raise FormatError(f"{index_path}: weight_map values must be shard file names")
    meta = index.get("metadata") or {}
    if not isinstance(meta, dict):
        raise FormatError(f"{index_path}: \"metadata\" must be a JSON object")
    return index


def _shard_paths(index_path: str, names: list[str]) -> list[str]:
    """Paths of the index's shards; refuses escaping paths and repeated file names."""
    folder = os.path.dirname(os.path.abspath(index_path))
    seen: dict[str, str] = {}
    paths = []
    for name in names:
        parts = os.path.normpath(name).split(os.sep)
        if os.path.isabs(name) or ".." in parts or "\0" in name:
            raise FormatError(f"{index_path}: shard path {name!r} leaves the index's folder; "
                              "shard paths must be relative and inside it")
        base = os.path.basename(name)
        if base in seen:
            raise FormatError(f"{index_path}: shards {seen[base]!r} and {name!r} have the same "
                              "file name; gpuquant writes shards side by side and would lose one")
        seen[base] = name
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FormatError(f"{index_path}: shard {name} is missing")
        paths.append(path)
    return paths


def _read_index(index_path: str) -> tuple[list[str], dict]:
    index = _load_index(index_path)
    names = list(dict.fromkeys(sorted(index["weight_map"].values())))
    return _shard_paths(index_path, names), index.get("metadata") or {}


def _check_unique(checkpoint: Checkpoint, fp8: bool = False) -> Checkpoint:
    """Refuse a tensor stored in two shards (headers only): which copy is meant is unknown."""
    where: dict[str, str] = {}
    for shard in checkpoint.shards:
        with SafetensorsFile(shard, fp8=fp8) as f:
            for key in f.keys():
                if key in where:
                    raise FormatError(f"{checkpoint.path}: tensor {key!r} is stored in two "
                                      f"shards, {where[key]} and {os.path.basename(shard)}; "
                                      "keep one copy")
                where[key] = os.path.basename(shard)
    return checkpoint


def open_checkpoint(path: str, fp8: bool = False) -> Checkpoint:
    """A .safetensors file, a folder of shards, or a model.safetensors.index.json (a tensor
    stored in two shards is refused). ``fp8``: shards may hold FP8 tensors (SafetensorsFile)."""
    if path.endswith(".json") or os.path.isdir(path):
        return _check_unique(_open_checkpoint(path), fp8)
    return _open_checkpoint(path)


def _open_checkpoint(path: str) -> Checkpoint:
    if path.endswith(".json"):
        shards, meta = _read_index(path)
        return Checkpoint(path, shards, True, meta, index=path)
    if os.path.isdir(path):
        index = os.path.join(path, INDEX_NAME)
        if os.path.isfile(index):
            shards, meta = _read_index(index)
            return Checkpoint(path, shards, True, meta, index=index)
        shards = sorted(os.path.join(path, n) for n in os.listdir(path)
                        if n.endswith(".safetensors"))
        if not shards:
            raise FormatError(f"{path}: folder holds no .safetensors file")
        return Checkpoint(path, shards, True, {})
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file")
    return Checkpoint(path, [path], False, {})


def parse_size(text: str) -> int:
    """Bytes of "5GB", "500MB", "100KB" (powers of 10, as Hugging Face), "2GiB" or a plain int."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)?\s*", str(text), re.IGNORECASE)
    if match is None:
        raise QuantizationError(f"{text!r} is no size; give bytes (an integer) or a number with "
                                "KB, MB, GB, TB (or KiB, MiB, GiB, TiB), e.g. 5GB")
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])
    if size <= 0:
        raise QuantizationError(f"{text!r}: the size must be positive")
    return size


def plan_shards(sizes: list[int], max_bytes: int) -> list[list[int]]:
    """Consecutive items per shard, in order; a new shard starts where ``max_bytes`` would be
    passed (an item larger than ``max_bytes`` gets a shard of its own)."""
    groups: list[list[int]] = []
    total = 0
    for i, size in enumerate(sizes):
        if not groups or (total + size > max_bytes and groups[-1]):
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += size
    return groups or [[]]


def shard_names(count: int) -> list[str]:
    """model-00001-of-0000N.safetensors, ..., as Hugging Face names shards."""
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


def assign_shards(sizes: list[int], ranks: int) -> list[list[int]]:
    """Shard numbers per rank, balanced by bytes: largest first to the least loaded rank."""
    load = [0] * ranks
    owned: list[list[int]] = [[] for _ in range(ranks)]
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        rank = min(range(ranks), key=lambda r: (load[r], r))
        owned[rank].append(i)
        load[rank] += sizes[i]
    return [sorted(o) for o in owned]


def write_index(folder: str, names: list[str], index_metadata: dict,
                weight_map: dict[str, str]) -> None:
    """Write the index of the shards ``names`` in ``folder`` (the sizes of the files there)."""
    total = sum(os.path.getsize(os.path.join(folder, n)) for n in names)
    index = {"metadata": {**index_metadata, "total_size": total},
             "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(folder, INDEX_NAME), "w") as f:
        json.dump(index, f, indent=2)
