"""Checkpoints on disk: one safetensors file, or shards with a model.safetensors.index.json.

The CLI works through this module tensor by tensor: each output file's
header is planned from shapes alone, then tensors are read lazily (memory
mapped), converted and written one at a time, so peak memory stays near a
few times the largest tensor. Every output appears only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator

import numpy as np

from .errors import FormatError, QuantizationError
from .safetensors_file import SafetensorsFile

__all__ = ["Checkpoint", "open_checkpoint", "INDEX_NAME", "write_output"]

INDEX_NAME = "model.safetensors.index.json"


@dataclasses.dataclass
class Checkpoint:
    """The shard files of a checkpoint, in order, and the index's own metadata."""

    path: str
    shards: list[str]
    sharded: bool
    index_metadata: dict

    def files(self) -> Iterator[tuple[str, SafetensorsFile]]:
        """(shard file name, open file) for each shard, one open at a time."""
        for shard in self.shards:
            with SafetensorsFile(shard) as f:
                yield os.path.basename(shard), f


def _read_index(index_path: str) -> tuple[list[str], dict]:
    try:
        with open(index_path) as f:
            index = json.load(f)
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except FileNotFoundError:
        raise FormatError(f"{index_path}: no such file") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{index_path}: not a safetensors index ({exc})") from None
    folder = os.path.dirname(os.path.abspath(index_path))
    shards = [os.path.join(folder, name) for name in dict.fromkeys(sorted(weight_map.values()))]
    for shard in shards:
        if not os.path.isfile(shard):
            raise FormatError(f"{index_path}: shard {os.path.basename(shard)} is missing")
    return shards, index.get("metadata", {}) or {}


def open_checkpoint(path: str) -> Checkpoint:
    """A .safetensors file, a folder of shards, or a model.safetensors.index.json."""
    if path.endswith(".json"):
        shards, meta = _read_index(path)
        return Checkpoint(path, shards, True, meta)
    if os.path.isdir(path):
        index = os.path.join(path, INDEX_NAME)
        if os.path.isfile(index):
            shards, meta = _read_index(index)
            return Checkpoint(path, shards, True, meta)
        shards = sorted(os.path.join(path, n) for n in os.listdir(path)
                        if n.endswith(".safetensors"))
        if not shards:
            raise FormatError(f"{path}: folder holds no .safetensors file")
        return Checkpoint(path, shards, True, {})
    if not os.path.exists(path):
        raise FormatError(f"{path}: no such file")
    return Checkpoint(path, [path], False, {})


def check_output(out: str, sharded: bool, force: bool) -> None:
    """Refuse an existing output without --force, and an output folder that does not exist."""
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise QuantizationError(f"{out}: the output folder {parent} does not exist")
    if os.path.exists(out) and not force:
        raise QuantizationError(f"{out}: exists; pass --force to replace it")
    if os.path.exists(out) and sharded != os.path.isdir(out):
        kind = "a folder" if sharded else "a file"
        raise QuantizationError(f"{out}: exists and is not {kind}; choose another output")


def write_output(out: str, checkpoint: Checkpoint, force: bool,
                 write_shard: Callable[[str, SafetensorsFile, str], dict[str, str]]) -> None:
    """Write every shard through ``write_shard(name, input, output path) -> {key: shard}``.

    A single file is written atomically by write_shard itself. Shards go to a
    temporary folder beside ``out`` that replaces ``out`` only when every
    shard and the index are written.
    """
    check_output(out, checkpoint.sharded, force)
    if not checkpoint.sharded:
        for _, f in checkpoint.files():
            write_shard(os.path.basename(out), f, out)
        return
    parent = os.path.dirname(os.path.abspath(out))
    staging = tempfile.mkdtemp(prefix=".gpuquant-", dir=parent)
    try:
        weight_map: dict[str, str] = {}
        total = 0
        for name, f in checkpoint.files():
            target = os.path.join(staging, name)
            weight_map.update(write_shard(name, f, target))
            total += os.path.getsize(target)
        index = {"metadata": {**checkpoint.index_metadata, "total_size": total},
                 "weight_map": dict(sorted(weight_map.items()))}
        with open(os.path.join(staging, INDEX_NAME), "w") as f:
            json.dump(index, f, indent=2)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def as_float(raw: np.ndarray, tag: str) -> np.ndarray:
    """A stored tensor as NumPy floats; bfloat16 bits are widened to float32 (exactly)."""
    from .arrays import bf16_bits_to_f32

    return bf16_bits_to_f32(raw) if tag == "BF16" else raw
