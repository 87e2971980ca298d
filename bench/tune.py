"""``python -m bench.tune``: sweep the launch parameters of tuning.json on a GPU, rewrite it.

For each kernel of the table and each size class, every candidate
``{"TILE", "EPT"}`` (TILE 256..8192, EPT 8..64, 1 to 16 warps) is forced with
``tuning.override`` (launch plans cleared), the bench operations that launch
the kernel run at a representative float16 size of the class, their outputs
are compared bit for bit with those of the table's current configuration,
and they are timed with ``do_bench``. The fastest exact candidate (mean time
relative to the current configuration) wins; the current one stays unless a
candidate beats it by more than 2 %. An op that launches exactly what it
launched under an earlier candidate (the recorder shows it) is not run again. The sweep
keeps to ``--budget-s`` (default 170 s, set-up included): what does not fit is
skipped, and the table's notes say how many.

The table is rewritten atomically (``--out``, default the package's
tuning.json), each tuned entry with a "source" note (GPU, date, ms, fraction
of copy) and the table with ``measured_on``. ``--dry-run`` runs the same code
on the CPU (torch CPU tensors, Triton interpreter, tiny inputs, two
candidates) and writes to a temporary file unless ``--out`` is given: the
plumbing is checked, no figure of it is a GPU measurement.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import tempfile
import time

from .interpreter import rerun_under_interpreter
from .tune_workloads import (
    USES,
    Workload,
    make_workload,
    plan_clear,
    same_bits,
    signature,
    tensors_of,
    uses_by_recording,
)

TILES = (256, 512, 1024, 2048, 4096, 8192)
EPTS = (8, 16, 32, 64)
GPU_SHAPES = {"small": (32, 4096), "medium": (2048, 4096), "large": (8192, 8192)}
DRY_SHAPES = {"small": (4, 256), "medium": (8, 256), "large": (16, 256)}
PRIORITY = ["fused_units_kernel", "dequantize_units_kernel", "segment_minmax_kernel",
            "column_minmax_kernel", "quantize_tile_kernel",
            "dequantize_tile_kernel"]  # issue 9's order of importance
KEEP_MARGIN = 0.98  # a candidate must beat the current configuration by 2 % to replace it


def candidates(current: dict) -> list[dict]:
    """The TILE/EPT grid, pruned to 1..16 warps of EPT elements per thread, nearest to
    ``current`` first (the current configuration itself leads). The sweep keeps the
    current configuration's other parameters, if any, in every candidate."""
    grid = [{"TILE": t, "EPT": e} for t in TILES for e in EPTS if 1 <= t // (32 * e) <= 16]

    def distance(c):
        return (abs(math.log2(c["TILE"] / current.get("TILE", 1024)))
                + abs(math.log2(c["EPT"] / current.get("EPT", 16))))

    grid.sort(key=distance)
    return grid


# --------------------------------------------------------------------- sweep
@dataclasses.dataclass
class SizeClass:
    """One size class's input, copy bandwidth, workloads and reference results."""

    name: str
    shape: tuple[int, int]
    copy_gbps: float
    workloads: dict[str, Workload]
    refs: dict[str, tuple[list, float]]  # op -> (output arrays, ms) under the current table


def make_input(shape, device):
    """float16 random normals (never zeros) on the sweep's device."""
    import numpy as np
    import torch

    a = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return torch.from_numpy(a).to(device="cuda" if device.kind == "cuda" else "cpu",
                                  dtype=torch.float16)


def prepare_class(name, shape, device, ops, backend, repeats) -> SizeClass:
    x = make_input(shape, device)
    copy_gbps = device.copy_bandwidth(x, repeats)
    plan_clear()
    workloads = {op: make_workload(op, x, backend) for op in ops}
    refs = {op: (tensors_of(w.fn()), device.time(w.fn, repeats)[0]) for op, w in workloads.items()}
    return SizeClass(name, shape, copy_gbps, workloads, refs)


@dataclasses.dataclass
class KernelSweep:
    """The candidates of one kernel, tried one at a time on every size class."""

    kernel: str
    ops: list[str]
    current: dict  # size class -> its configuration in the table
    pending: list[dict]
    results: dict = dataclasses.field(default_factory=dict)  # class -> [(config, result)]
    # class -> {(op, what that op launches): (bit-exact, ms)}: an op is run once per launch
    seen: dict = dataclasses.field(default_factory=dict)
    tried: int = 0
    counts: dict = dataclasses.field(default_factory=dict)  # class -> same/inexact/failed

    def start(self, classes: dict[str, SizeClass], device, repeats: int) -> None:
        """Each class's current configuration, forced, as its first result. It launches what
        the table chose for the prepared references (score 1, nothing to run) unless the
        representative size falls in another class (a dry run's tiny inputs do)."""
        from gpuquant.backends.triton import tuning

        for sc in classes.values():
            self.seen[sc.name] = {(op, signature([sc.workloads[op]])): (True, sc.refs[op][1])
                                  for op in self.ops}
            self.counts[sc.name] = dict(same=0, inexact=0, failed=0)
            with tuning.override(self.kernel, self.current[sc.name]):
                result = self._measure(sc, device, repeats)
            plan_clear()
            self.results[sc.name] = [(self.current[sc.name], result)]
            self.counts[sc.name] = dict(same=0, inexact=0, failed=0)

    def step(self, classes: dict[str, SizeClass], device, repeats: int) -> None:
        from gpuquant.backends.triton import tuning

        config = self.pending.pop(0)
        self.tried += 1
        for sc in classes.values():
            try:
                with tuning.override(self.kernel, config):
                    result = self._measure(sc, device, repeats)
            except Exception as exc:  # noqa: BLE001 - a candidate that fails to build is out
                print(f"  {self.kernel} {sc.name} {config}: failed: {type(exc).__name__}: "
                      f"{str(exc)[:120]}")
                self.counts[sc.name]["failed"] += 1
                result = {"exact": False, "ms": None, "score": math.inf}
            finally:
                plan_clear()
            self.results[sc.name].append((config, result))

    def _measure(self, sc: SizeClass, device, repeats: int) -> dict:
        """Bit-exactness and time of each op under the forced configuration; an op that
        launches exactly what it launched under an earlier candidate is not run again."""
        parts, fresh = [], False
        for op in self.ops:
            w = sc.workloads[op]
            key = (op, signature([w]))
            if key not in self.seen[sc.name]:
                fresh = True
                plan_clear()
                exact = same_bits(tensors_of(w.fn()), sc.refs[op][0])
                if not exact:
                    print(f"  {self.kernel} {sc.name} {op}: NOT bit-exact against the current "
                          "configuration")
                self.seen[sc.name][key] = (exact, device.time(w.fn, repeats)[0] if exact else None)
            parts.append(self.seen[sc.name][key])
        if not fresh:
            self.counts[sc.name]["same"] += 1
        if not all(exact for exact, _ in parts):
            self.counts[sc.name]["inexact"] += 1
            return {"exact": False, "ms": None, "score": math.inf}
        ms = [m for _, m in parts]
        score = sum(m / sc.refs[op][1] for m, op in zip(ms, self.ops)) / len(ms)
        return {"exact": True, "ms": ms, "score": score}

    def winner(self, name: str) -> tuple[dict, dict, float]:
        """(configuration, result, speed-up over the current one) to keep for class ``name``."""
        current = self.results[name][0]
        exact = [cr for cr in self.results[name] if cr[1]["exact"]]
        if not exact:
            return (*current, 1.0)
        best = min(exact, key=lambda cr: cr[1]["score"])
        if best[1]["score"] < current[1]["score"] * KEEP_MARGIN:
            return (*best, current[1]["score"] / best[1]["score"])
        return (*current, 1.0)


def run_sweeps(sweeps: list[KernelSweep], classes, device, repeats: int, deadline: float):
    """Each kernel its share of the time left first, then the rest in order of importance;
    a candidate starts only if one more, as long as that kernel's slowest so far, still fits."""
    longest = {sweep.kernel: 0.0 for sweep in sweeps}

    def go(sweep: KernelSweep, until: float) -> None:
        while sweep.pending and time.monotonic() + longest[sweep.kernel] < until:
            t0 = time.monotonic()
            sweep.step(classes, device, repeats)
            longest[sweep.kernel] = max(longest[sweep.kernel], time.monotonic() - t0)

    for i, sweep in enumerate(sweeps):
        share = (deadline - time.monotonic()) / (len(sweeps) - i)
        go(sweep, min(deadline, time.monotonic() + share))
    for sweep in sweeps:
        go(sweep, deadline)


# --------------------------------------------------------------------- table
def note(sweep: KernelSweep, sc: SizeClass, where: str) -> str:
    """The "source" of a tuned entry: where, when, and what each op measured."""
    config, result, gain = sweep.winner(sc.name)
    if not result["exact"]:
        return f"{where}: float16 {sc.shape[0]}x{sc.shape[1]}: no candidate was bit-exact; kept"
    figures = ", ".join(
        f"{op} {ms:.4f} ms {sc.workloads[op].bytes_moved / ms / 1e6 / sc.copy_gbps:.2f} of copy"
        for op, ms in zip(sweep.ops, result["ms"]))
    kept = "kept the current configuration" if config is sweep.current[sc.name] else \
        f"{gain:.2f}x as fast as the current configuration"
    c = sweep.counts[sc.name]
    return (f"{where}: float16 {sc.shape[0]}x{sc.shape[1]}: {figures}; {kept}; "
            f"{sweep.tried} candidates tried ({c['same']} launched as another, {c['inexact']} "
            f"not bit-exact, {c['failed']} failed), {len(sweep.pending)} skipped for time")


def write_table(table: dict, path: str) -> None:
    """Write ``table`` to ``path`` atomically (a temporary file in the same folder, renamed)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=folder)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(table, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def tuned_table(table: dict, sweeps: list[KernelSweep], classes, where: str) -> dict:
    new = json.loads(json.dumps(table))
    for sweep in sweeps:
        entry = new["kernels"][sweep.kernel]
        for name, sc in classes.items():
            config = sweep.winner(name)[0]
            entry[name] = dict({k: v for k, v in config.items() if k != "source"},
                               source=note(sweep, sc, where))
    new["measured_on"] = where
    return new


# ---------------------------------------------------------------------- main
def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None,
                    help="where to write the table (default: the package's tuning.json; "
                         "with --dry-run a temporary file)")
    ap.add_argument("--budget-s", type=float, default=170.0,
                    help="seconds for the whole run, set-up included")
    ap.add_argument("--repeats", type=int, default=2, help="do_bench rep = 10 ms x repeats")
    ap.add_argument("--kernels", default=None, help="comma-separated subset of the table's")
    ap.add_argument("--max-candidates", type=int, default=None,
                    help="candidates per kernel at most (default: all; --dry-run: 2)")
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU, Triton interpreter, tiny inputs: checks the plumbing only")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.max_candidates = args.max_candidates or 2
        args.repeats = 1
        args.out = args.out or os.path.join(tempfile.mkdtemp(prefix="gpuquant-tune-"),
                                            "tuning.json")
    return args


def main(argv=None) -> int:
    started = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.dry_run:
        status = rerun_under_interpreter("bench.tune", argv)
        if status is not None:
            return status
    import torch

    from gpuquant.backends.triton import tuning

    from .machine import Device

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("python -m bench.tune needs a CUDA GPU; --dry-run checks it on the CPU")
    device = Device("cpu" if args.dry_run else "cuda", "torch")
    table = tuning.load_table()
    kernels = [k for k in PRIORITY if k in table["kernels"]] + \
        [k for k in table["kernels"] if k not in PRIORITY]
    if args.kernels:
        kernels = [k for k in kernels if k in args.kernels.split(",")]
    names = [name for name, _ in tuning.SIZE_CLASSES]
    shapes = DRY_SHAPES if args.dry_run else GPU_SHAPES
    backend = "triton"
    probe_x = make_input(shapes["medium"], device)
    probe = {op: make_workload(op, probe_x, backend) for ops in USES.values() for op in ops}
    uses = uses_by_recording(probe, kernels)
    needed = sorted({op for k in kernels for op in uses[k]})
    classes = {n: prepare_class(n, shapes.get(n, shapes["large"]), device, needed, backend,
                                args.repeats) for n in names}
    sweeps = []
    for k in kernels:
        if not uses[k]:
            print(f"# {k}: no operation launches it; left as it is")
            continue
        entry = table["kernels"][k]
        current = {n: {p: v for p, v in (entry.get(n) or entry["default"]).items()
                       if p != "source"} for n in names}
        grid = [dict(current[names[-1]], **c) for c in candidates(current[names[-1]])]
        sweeps.append(KernelSweep(k, uses[k], current, grid[:args.max_candidates]))
        sweeps[-1].start(classes, device, args.repeats)
    run_sweeps(sweeps, classes, device, args.repeats, started + args.budget_s)
    spent = time.monotonic() - started
    where = where_measured(device)
    write_table(tuned_table(table, sweeps, classes, where), args.out)
    report(sweeps, classes, spent, args.out)
    return 0


def where_measured(device) -> str:
    import torch
    import triton

    day = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    if device.kind != "cuda":
        return (f"dry run {day} on the CPU (Triton {triton.__version__} interpreter): plumbing "
                "only, no figure here is a GPU measurement")
    return (f"{torch.cuda.get_device_name()}, {day}, triton {triton.__version__}, "
            f"torch {torch.__version__}")


def report(sweeps, classes, spent: float, path: str) -> None:
    for sweep in sweeps:
        for name in classes:
            config, result, gain = sweep.winner(name)
            kept = "kept" if config is sweep.current[name] else f"{gain:.2f}x faster"
            figures = ", ".join(f"{op} {ms:.4f} ms" for op, ms in zip(sweep.ops, result["ms"] or []))
            print(f"{sweep.kernel:<24} {name:<7} TILE={config['TILE']:<5} EPT={config['EPT']:<3} "
                  f"{kept} ({figures or 'not bit-exact'})")
    print(f"# sweep took {spent:.0f} s; wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
