"""Checkpoint files on disk: one safetensors file, or shards with a model.safetensors.index.json.

Reading checks the index before any shard is opened: every weight_map path
must stay inside the index's folder, and no two shards may share a file name
(outputs keep shard file names side by side in one folder). Writing never
touches the input: an output that resolves to the input file, its folder or
any of its shards is refused, even with ``force``. Every output file appears
only when complete; ``force`` replaces only the files gpuquant writes (the
shards and the index), never anything else in the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator

from .errors import FormatError, QuantizationError
from .safetensors_file import SafetensorsFile

__all__ = ["Checkpoint", "open_checkpoint", "INDEX_NAME", "write_output"]

INDEX_NAME = "model.safetensors.index.json"


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


def open_checkpoint(path: str) -> Checkpoint:
    """A .safetensors file, a folder of shards, or a model.safetensors.index.json."""
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


def _same(a: str, b: str) -> bool:
    """Whether two paths name one file or folder (through symlinks and hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _targets(out: str, checkpoint: Checkpoint) -> list[str]:
    """Every file the output consists of."""
    if not checkpoint.sharded:
        return [out]
    return [os.path.join(out, os.path.basename(s)) for s in checkpoint.shards] + \
        [os.path.join(out, INDEX_NAME)]


def check_output(out: str, checkpoint: Checkpoint, force: bool) -> None:
    """Refuse an output that is the input, exists without ``force``, or has no folder."""
    inputs = checkpoint.shards + ([checkpoint.index] if checkpoint.index else [])
    if checkpoint.folder is not None and _same(out, checkpoint.folder):
        raise QuantizationError(f"{out}: is the input folder; choose another output folder")
    for target in _targets(out, checkpoint):
        if any(_same(target, src) for src in inputs):
            raise QuantizationError(f"{out}: would overwrite the input {target}; choose "
                                    "another output (even --force never replaces the input)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise QuantizationError(f"{out}: the output folder {parent} does not exist")
    if not os.path.lexists(out):
        return
    if not force:
        raise QuantizationError(f"{out}: exists; pass --force to replace it")
    if checkpoint.sharded != os.path.isdir(out):
        kind = "a folder" if checkpoint.sharded else "a file"
        raise QuantizationError(f"{out}: exists and is not {kind}; choose another output")
    for target in _targets(out, checkpoint) if checkpoint.sharded else []:
        if os.path.isdir(target) and not os.path.islink(target):
            raise QuantizationError(f"{target}: is a folder; --force replaces only files")


def _staging_folder(parent: str) -> str:
    """A new hidden folder with the umask's permissions (tempfile.mkdtemp's are 0o700)."""
    while True:
        path = os.path.join(parent, f".gpuquant-{secrets.token_hex(6)}")
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def write_output(out: str, checkpoint: Checkpoint, force: bool,
                 write_shard: Callable[[str, SafetensorsFile, str], dict[str, str]]) -> None:
    """Write every shard through ``write_shard(name, input, output path) -> {key: shard}``.

    A single file is written atomically by write_shard itself. Shards and the
    index go to a hidden temporary folder; a new output folder is then renamed
    into place whole, while into an existing one (``force``) each file is
    moved over its old version, the index last. Other files there are kept.
    """
    check_output(out, checkpoint, force)
    if not checkpoint.sharded:
        for _, f in checkpoint.files():
            write_shard(os.path.basename(out), f, out)
        return
    exists = os.path.isdir(out)
    staging = _staging_folder(out if exists else os.path.dirname(os.path.abspath(out)))
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
        if not exists:
            os.replace(staging, out)
            return
        for name in [os.path.basename(s) for s in checkpoint.shards] + [INDEX_NAME]:
            os.replace(os.path.join(staging, name), os.path.join(out, name))
        os.rmdir(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
