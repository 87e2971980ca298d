"""``gpuquant export``: a Hugging Face model folder -> a compressed-tensors pack-quantized folder.

Everything is planned from the safetensors headers first (every shard is
opened and checked, every selected weight's shape validated), so bad input
fails before anything is written. Then each shard is streamed tensor by
tensor into a staging folder beside the output, next to the rewritten index,
the new config.json and copies of every other file (tokenizer, generation
config, ...); the staging folder becomes the output only when complete.
Under torchrun or ``--workers`` the ranks share the input shards out
(:func:`export_folder`); rank 0 writes the other files once all succeeded.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

from ..checkpoint.files import SafetensorsFile, write_safetensors_stream
from ..checkpoint.index import assign_shards, open_checkpoint, write_index
from ..checkpoint.job import Team, write_on_ranks
from ..checkpoint.output import INDEX_NAME, check_output
from ..core.devices import converter_for
from ..core.frameworks import as_float
from ..core.pack_quantized import packed_width
from ..errors import FormatError, QuantizationError
from .ctensors import SCALE_DTYPES, PackOptions, int_weight, pack_weight, quantization_config
from .targets import select_weights

__all__ = ["compressed_tensors", "export_folder", "prepare_export"]

_FLOAT_TAGS = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float32"}


def _read_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isdir(model_dir):
        raise FormatError(f"{model_dir}: not a folder; export takes a Hugging Face model folder "
                          "(config.json and safetensors)")
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise FormatError(f"{model_dir}: no config.json; export takes a Hugging Face model "
                          "folder (config.json and safetensors)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FormatError(f"{path}: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise FormatError(f"{path}: not a JSON object")
    return config


def _headers(shards: list[str]) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """{tensor: (shard, dtype tag, shape)} of every shard, each header checked."""
    found = {}
    for shard in shards:
        with SafetensorsFile(shard) as f:
            for key in f.keys():
                found[key] = (shard, f.dtype_tag(key), f.shape(key))
    return found


def _refuse_quantized(model_dir: str, config: dict, headers: dict) -> None:
    """An exported (or otherwise quantized) model is refused: it has no float weights left."""
    qc = config.get("quantization_config")
    method = None if not qc else qc.get("quant_method", "quantization_config") \
        if isinstance(qc, dict) else str(qc)
    if method is None and any(k.endswith((".qdata", "_packed")) for k in headers):
        method = "gpuquant" if any(k.endswith(".qdata") for k in headers) else "packed weights"
    if method is not None:
        raise QuantizationError(f"{model_dir}: already quantized ({method}); export the original "
                                "float model")


def _entries(f: SafetensorsFile, selected: dict[str, str], options, bits: int, symmetric: bool,
             groups: dict[str, int], scale_tag: str) -> list[tuple[str, str, tuple[int, ...]]]:
    entries = []
    for key in f.keys():
        if key not in selected:
            entries.append((key, f.dtype_tag(key), f.shape(key)))
            continue
        if hasattr(options, "entries"):  # the float formats (ctensors_float.py)
            entries += options.entries(key, f.shape(key), scale_tag)
            continue
        rows, cols = f.shape(key)
        if getattr(options, "activations", None) is not None:  # int-quantized: int8 codes
            entries += [(key, "I8", (rows, cols)), (key + "_scale", scale_tag, (rows, groups[key]))]
            continue
        entries += [(key + "_packed", "I32", (rows, packed_width(cols, bits))),
                    (key + "_scale", scale_tag, (rows, groups[key])),
                    (key + "_shape", "I64", (2,))]
        if not symmetric:
            entries.append((key + "_zero_point", "I32", (packed_width(rows, bits), groups[key])))
    return entries


def compressed_tensors(model_dir: str, output: str, options: PackOptions | None = None, *,
                       force: bool = False, device: str = "auto", **option_values: Any) -> dict:
    """Export a Hugging Face model folder as compressed-tensors "pack-quantized".

    Args:
        model_dir: folder with config.json and model.safetensors (or shards and
            model.safetensors.index.json).
        output: the new folder; an existing one needs ``force=True``.
        options: a :class:`PackOptions`, or its fields as keyword arguments
            (``scheme="int4"``, ``granularity="group"``, ``group_size=128``,
            ``symmetric=True``, ``calibration="minmax"``, ``scale_dtype=None``,
            ``ignore=("lm_head",)``, ``targets=None``, ``ignore_nonfinite=False``,
            ``scale_rule="max"``; ``"half_range"``: llm-compressor's min/max bytes).
        device: "auto" (a GPU when one works), "cpu" or "cuda".

    Returns:
        Counts, bytes and seconds of the export.
    """
    options = options if options is not None else PackOptions(**option_values)
    return export_folder(model_dir, output, options, force, converter_for(device))


def export_folder(model_dir: str, output: str, options: PackOptions, force: bool, to_device,
                  team: Team | None = None, prepared: tuple | None = None) -> dict:
    """:func:`compressed_tensors` on one rank of ``team``: each rank writes the input shards
    :func:`shards.assign_shards` gives it (balanced by bytes) into one staging folder; after
    all agree that they succeeded, rank 0 writes the other files and puts the folder in place.
    Every shard is written by the same code whatever the number of ranks, so the output is
    byte-identical to one process's. The job's stats on every rank. ``prepared``: what
    :func:`prepare_export` returned, when planned before the team was joined."""
    start, team = time.perf_counter(), team or Team()
    config, checkpoint, selected, groups, scale_dtype = prepared or team.together(
        prepare_export, model_dir, output, force, options)
    names = [os.path.basename(s) for s in checkpoint.shards]
    entries = [_entries(f, selected, options, options.bits, options.symmetric, groups,
                        SCALE_DTYPES[scale_dtype]) for _, f in checkpoint.files()]
    mine = assign_shards([os.path.getsize(s) for s in checkpoint.shards], team.world)[team.rank]
    stats = {"quantized": 0, "kept": 0, "bytes_in": 0, "bytes_out": 0}
    weight_map = {e[0]: name for name, es in zip(names, entries) for e in es}
    total = write_on_ranks(
        team, output, checkpoint.inputs, force, _output_names(model_dir, checkpoint),
        lambda stage: _write_mine(checkpoint, stage, mine, entries, selected, options,
                                  scale_dtype, to_device, stats),
        lambda stage: _finish(model_dir, stage, config, checkpoint, weight_map))
    summed = team.reduce([stats[k] for k in stats], "SUM").tolist()
    stats = dict(zip(stats, summed), scale_dtype=scale_dtype)
    stats.update(seconds=time.perf_counter() - start, bytes_out=total or stats["bytes_out"])
    return stats


def prepare_export(model_dir: str, output: str, force: bool, options: PackOptions) -> tuple:
    """(config, checkpoint, selected, groups, scale dtype), from the headers; checks output."""
    config = _read_config(model_dir)
    checkpoint = open_checkpoint(model_dir)
    check_output(output, checkpoint.inputs, force, folder=True,
                 names=_output_names(model_dir, checkpoint))
    return (config, checkpoint, *_plan(model_dir, config, checkpoint, options))


def _output_names(model_dir: str, checkpoint) -> list[str]:
    """Every file the export writes: the shards, the index, the config and the side files."""
    side = [n for n in sorted(os.listdir(model_dir)) if _is_side_file(checkpoint, n)]
    return [os.path.basename(s) for s in checkpoint.shards] + [INDEX_NAME, "config.json"] + side


def _write_mine(checkpoint, stage: str, mine, entries, selected, options: PackOptions,
                scale_dtype: str, to_device, stats: dict) -> None:
    for n in mine:
        path = os.path.join(stage, os.path.basename(checkpoint.shards[n]))
        with SafetensorsFile(checkpoint.shards[n]) as f:
            write_safetensors_stream(path, entries[n], _produce(f, selected, options,
                                                               scale_dtype, to_device, stats),
                                     f.metadata)
        stats["bytes_out"] += os.path.getsize(path)


def _finish(model_dir: str, stage: str, config: dict, checkpoint, weight_map: dict) -> int:
    """Rank 0, after every rank wrote its shards: the side files; returns the bytes of the
    shards."""
    total = sum(os.path.getsize(os.path.join(stage, os.path.basename(s)))
                for s in checkpoint.shards)
    _write_side_files(model_dir, stage, config, checkpoint, weight_map, total)
    return total


def _plan(model_dir: str, config: dict, checkpoint, options: PackOptions):
    """(selected {tensor: module}, groups per row {tensor: n}, scale dtype), from the headers;
    adds ``quantization_config`` to ``config``."""
    headers = _headers(checkpoint.shards)
    _refuse_quantized(model_dir, config, headers)
    floats = {k: shape for k, (_, tag, shape) in headers.items() if tag in _FLOAT_TAGS}
    selected, absent = select_weights(model_dir, floats, options.targets, list(options.ignore))
    if not selected:
        raise QuantizationError(f"{model_dir}: no Linear weight to quantize (ignore="
                                f"{list(options.ignore)}, targets={options.targets!r})")
    for key in selected:
        try:
            options.check_shape(key, floats[key])
        except QuantizationError as exc:
            raise type(exc)(f"{model_dir}: {exc}") from None
    groups = {k: floats[k][1] // options.group_size if options.granularity == "group" else 1
              for k in selected}  # (pack-quantized only)
    model_dtype = config.get("dtype") or config.get("torch_dtype")
    scale_dtype = options.scale_dtype or (model_dtype if model_dtype in SCALE_DTYPES else
                                          _FLOAT_TAGS[headers[next(iter(selected))][1]])
    targets = ["Linear"] if options.targets is None else ["re:" + options.targets]
    config["quantization_config"] = options.quantization_config(
        list(options.ignore) + absent, targets) if hasattr(options, "entries") \
        else quantization_config(options, list(options.ignore) + absent, targets)
    return selected, groups, scale_dtype


def _produce(f: SafetensorsFile, selected, options: PackOptions, scale_dtype: str, to_device,
             stats: dict):
    for key in f.keys():
        raw = f.get(key)
        stats["bytes_in"] += raw.nbytes
        if key not in selected:
            stats["kept"] += 1
            yield raw
            continue
        w = as_float(raw, f.dtype_tag(key))
        if hasattr(options, "arrays"):  # the float formats: arrays in the order of entries
            stats["quantized"] += 1
            yield from options.arrays(w, scale_dtype, key)
            continue
        stats["quantized"] += 1
        if getattr(options, "activations", None) is not None:  # int-quantized
            yield from int_weight(to_device(w) if to_device else w, options, scale_dtype,
                                  key).values()
            continue
        arrays = pack_weight(to_device(w) if to_device else w, options, scale_dtype, key)
        yield arrays["weight_packed"]
        yield arrays["weight_scale"]
        yield arrays["weight_shape"]
        if not options.symmetric:
            yield arrays["weight_zero_point"]


def _write_side_files(model_dir: str, stage: str, config: dict, checkpoint, weight_map: dict,
                      total: int) -> None:
    """The index (if the input had one), config.json, and copies of every other file."""
    if checkpoint.index:
        write_index(stage, [os.path.basename(s) for s in checkpoint.shards],
                    checkpoint.index_metadata, weight_map)
    with open(os.path.join(stage, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    for name in sorted(os.listdir(model_dir)):
        if not _is_side_file(checkpoint, name):
            continue
        src = os.path.join(model_dir, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(stage, name), symlinks=True)
        else:
            shutil.copy2(src, os.path.join(stage, name))


def _is_side_file(checkpoint, name: str) -> bool:
    """A file of the model folder that the export copies as it is (tokenizer, README, ...)."""
    shards = {os.path.basename(s) for s in checkpoint.shards}
    return not (name.startswith(".") or name in shards or name in (INDEX_NAME, "config.json"))
