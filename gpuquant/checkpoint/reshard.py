"""``gpuquant quantize --shard-size``: shards of a planned size, on one process or many.

The plan depends only on the input: its tensors in order (shard by shard, each
file's own order), each with the bytes it will take once stored (quantized or
kept). Consecutive tensors fill ``model-0000i-of-0000N.safetensors`` up to
``--shard-size`` (a tensor never splits; a larger one gets a shard of its own).

Under torchrun (WORLD_SIZE > 1), or ``--workers N`` (torch.distributed's elastic
launcher on this machine), every rank makes the same plan and writes the
shards :func:`index.assign_shards` gives it into one staging folder next to
the output; after all agree that they succeeded, rank 0 writes the index and
puts the folder in place (:func:`job.write_on_ranks`, the one rank loop).
Each shard is written by the same code in the same order whatever the number
of ranks, so the output is byte-identical to a one-process run. When any rank
fails, every rank raises and the staging folder is removed: nothing partial
appears at the output.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time

from ..config import QuantConfig
from ..errors import QuantizationError
from .convert import Plan, Producer, file_metadata, unmatched_globs
from .files import DTYPES, SafetensorsFile, write_safetensors_stream
from .index import Checkpoint, assign_shards, open_checkpoint, plan_shards, shard_names, write_index
from .job import Team, launch_or_join, reporting_peer_failure, write_on_ranks
from .output import INDEX_NAME

__all__ = ["quantize_sharded", "run_sharded"]

SUMMED = ("quantized", "kept", "bytes_in", "bytes_out")
SLOWEST = ("read_s", "compute_s")


@dataclasses.dataclass
class Item:
    """One input tensor and what it becomes: stored entries, their bytes, its description."""

    path: str
    key: str
    stored: list | None
    entries: list
    nbytes: int
    in_bytes: int
    described: dict | None


def plan_items(checkpoint: Checkpoint, config: QuantConfig, include, exclude):
    """Every tensor in input order, planned; the count of those kept because they would grow,
    and the metadata of the input files (the first file's value wins)."""
    items, grew, meta = [], 0, {}
    for path, (_, f) in zip(checkpoint.shards, checkpoint.files()):
        plan = Plan(f, config, include, exclude)
        grew += plan.grew
        for k, v in f.metadata.items():
            meta.setdefault(k, v)
        for key, stored in plan.work:
            entries = stored or [(key, f.dtype_tag(key), f.shape(key))]
            nbytes = sum(math.prod(shape) * DTYPES[tag].itemsize for _, tag, shape in entries)
            items.append(Item(path, key, stored, entries, nbytes, f.nbytes(key),
                              plan.described.get(key)))
    names = [e[0] for it in items for e in it.entries]
    if len(set(names)) != len(names):
        clash = sorted({n for n in names if names.count(n) > 1})
        raise QuantizationError(f"{checkpoint.path}: stored names collide across shards: "
                                f"{clash[:5]}; --exclude the tensors behind them")
    return items, grew, meta


def _arrays(items: list[Item], producer: Producer):
    f = None
    try:
        for it in items:
            if f is None or f.path != it.path:
                if f is not None:
                    f.close()
                f = SafetensorsFile(it.path)
            yield from producer.arrays(f, it.key, it.stored)
    finally:
        if f is not None:
            f.close()


def _write_mine(staging: str, names, groups, mine, items, meta, producer) -> None:
    for n in mine:
        shard = [items[i] for i in groups[n]]
        described = {it.key: it.described for it in shard if it.described is not None}
        write_safetensors_stream(os.path.join(staging, names[n]),
                                 [e for it in shard for e in it.entries],
                                 _arrays(shard, producer), file_metadata(meta, described))


def quantize_sharded(src: str, out: str, config: QuantConfig, shard_size: int, *,
                     include=None, exclude=None, to_device=None, force: bool = False,
                     step=None, on_plan=None, team: Team | None = None) -> dict:
    """Quantize ``src`` into shards of at most ``shard_size`` stored bytes under ``out``; with a
    ``team`` of several ranks, each writes its share. Returns the job's stats (every rank).

    ``on_plan(n)`` hears the input bytes to count (the job's where ``team.counts_job``,
    else this rank's), ``step(name, total)`` each tensor with the bytes read so far."""
    team = team or Team()
    checkpoint = open_checkpoint(src)
    include, exclude = include or ["*"], exclude or []
    items, grew, meta = team.together(plan_items, checkpoint, config, include, exclude)
    groups = plan_shards([it.nbytes for it in items], shard_size)
    names = shard_names(len(groups))
    mine = assign_shards([sum(items[i].nbytes for i in g) for g in groups], team.world)[team.rank]
    if on_plan is not None:
        share = range(len(groups)) if team.counts_job else mine
        on_plan(sum(items[i].in_bytes for n in share for i in groups[n]))
    counted = None if step is None else (lambda name, n: step(name, team.count(n)))
    producer = Producer(config, to_device, counted)
    start = time.perf_counter()
    weight_map = {e[0]: names[n] for n, g in enumerate(groups) for i in g
                  for e in items[i].entries}
    write_on_ranks(team, out, checkpoint.inputs, force, names + [INDEX_NAME],
                   lambda staging: _write_mine(staging, names, groups, mine, items, meta, producer),
                   lambda staging: write_index(staging, names, checkpoint.index_metadata, weight_map))
    stats = dict(zip(SUMMED, team.reduce([producer.stats[k] for k in SUMMED], "SUM").tolist()))
    slow = team.reduce([producer.stats[k] for k in SLOWEST], "MAX").tolist()
    stats.update(zip(SLOWEST, slow), grew=grew, seconds=time.perf_counter() - start,
                 unmatched_globs=unmatched_globs(checkpoint, include, exclude), shards=len(names))
    return stats


def run_sharded(args, config: QuantConfig, argv: list[str], progress_factory):
    """The CLI's sharded quantize: launches --workers, or runs this rank; the stats on rank 0,
    None elsewhere (and in the launcher). A failure on another rank exits 1 (SystemExit)."""
    with reporting_peer_failure():
        return _run(args, config, argv, progress_factory)


def _run(args, config: QuantConfig, argv: list[str], progress_factory):
    if args.shard_size is None:
        raise QuantizationError("--workers and torchrun need --shard-size (e.g. --shard-size "
                                "5GB): the shards are what the processes share out")
    joined = launch_or_join(args, argv)
    if joined is None:
        return None
    to_device, team = joined
    try:
        progress = progress_factory(args.quiet or team.rank != 0)
        try:
            stats = quantize_sharded(args.input, args.output, config, args.shard_size,
                                     include=args.include, exclude=args.exclude,
                                     to_device=to_device, force=args.force,
                                     step=progress.step_to, on_plan=progress.set_total,
                                     team=team)
            progress.step_to("", team.count(0))  # every rank is done: the whole job's bytes
        finally:
            progress.close()
    finally:
        team.close()
    sys.stdout.flush()
    return stats if team.rank == 0 else None
