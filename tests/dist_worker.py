"""One rank of test_distributed.py's two-process check, run by torchrun.

``python -m torch.distributed.run --nproc-per-node=2 tests/dist_worker.py OUT`` has every
rank calibrate its share of the batches, call ``Calibrator.all_reduce`` and save the
resulting qparams and state (or the error it raised) to OUT/rank{R}.npz.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np

import gpuquant as gq

METHODS = {"minmax": "minmax", "percentile": gq.Percentile(0.5, 99.5), "entropy": "entropy",
           "mse": gq.MSE()}
LAYOUTS = {"tensor": {"scheme": "int8", "symmetric": False},
           "channel": {"scheme": "int4", "granularity": "channel", "axis": -1}}
# indices of the batches each rank calibrates; one process sees them all, in this order
SPLITS = {"unequal": ([0], [1, 2, 3]), "empty": ([], [0, 1, 2, 3])}
MOMENTUM = 0.25


def config(method: str, layout: str) -> gq.QuantConfig:
    return gq.QuantConfig(calibration=METHODS[method], **LAYOUTS[layout])


def batches(channels: int = 12) -> list[np.ndarray]:
    """Four batches of unequal rows whose ranges differ by up to 16x (radii 1 to 16), so
    ranks start from different histogram ranges."""
    rng = np.random.default_rng(7)
    return [(rng.standard_normal((rows, channels)) * s).astype(np.float32)
            for rows, s in [(40, 0.3), (25, 1.7), (64, 0.9), (7, 5.3)]]


def calibrator(cfg: gq.QuantConfig, data: list[np.ndarray], **kwargs) -> gq.Calibrator:
    cal = gq.Calibrator(cfg, **kwargs)
    for batch in data:
        cal.update(batch)
    return cal


def flat_state(cal: gq.Calibrator) -> dict[str, np.ndarray]:
    """The arrays of a calibrator's state, for exact comparison across ranks."""
    state = cal.state_dict()
    out = {"batches": np.array(state["batches"]), "backend": np.array(str(state["backend"])),
           "unit_shape": np.array(state["unit_shape"] or [], np.int64)}
    if state["histogram"] is None:
        out.update(lo=state["lo"], hi=state["hi"])
    else:
        out.update({key: state["histogram"][key] for key in ("counts", "radius", "lo", "hi")})
    return {k: np.asarray(v, np.float32 if k in ("lo", "hi") else None)
            for k, v in out.items() if v is not None}


def _record(results: dict, case: str, run) -> None:
    try:
        cal = run()
        results.update({f"{case}/{k}": v for k, v in flat_state(cal).items()})
        if cal.batches:
            params = cal.qparams()
            results[f"{case}/scale"], results[f"{case}/zero_point"] = params
    except gq.QuantizationError as exc:
        results[f"{case}/error"] = np.array(f"{type(exc).__name__}: {exc}")


def main(out: Path) -> None:
    """Gloo on the CPU by default; GQ_TEST_DIST_BACKEND=nccl reduces on each rank's GPU.
    With one rank, that rank calibrates every batch."""
    import torch
    import torch.distributed as dist

    backend = os.environ.get("GQ_TEST_DIST_BACKEND", "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend, timeout=timedelta(seconds=60))
    rank, world, data = dist.get_rank(), dist.get_world_size(), batches()
    every = dist.new_group(list(range(world)))  # an explicit group= for the "empty" split
    results: dict[str, np.ndarray] = {}
    for split, shares in SPLITS.items():
        mine = [data[i] for i in (shares[rank] if world > 1 else shares[0] + shares[1])]
        group = every if split == "empty" else None
        for method in METHODS:
            for layout in LAYOUTS:
                cfg = config(method, layout)
                _record(results, f"{split}/{method}/{layout}",
                        lambda cfg=cfg, mine=mine, group=group: calibrator(cfg, mine).all_reduce(group))
        cfg = config("minmax", "channel")
        _record(results, f"{split}/momentum",
                lambda cfg=cfg, mine=mine: calibrator(cfg, mine, momentum=MOMENTUM).all_reduce())
    cfg, mine = config("percentile", "channel"), [data[i] for i in SPLITS["empty"][rank]]
    _record(results, "update_after",  # the rank without batches goes on calibrating
            lambda: calibrator(cfg, mine).all_reduce().update(data[0]))
    _record(results, "nobody", lambda: gq.Calibrator(config("mse", "channel")).all_reduce())
    if world > 1:
        _disagree(results, rank, data)
    np.savez(out / f"rank{rank}.npz", **results)
    dist.destroy_process_group()


def _disagree(results: dict, rank: int, data: list[np.ndarray]) -> None:
    """Rank 1 differs from rank 0 in its config, then in its number of channels."""
    other = config("minmax", "tensor").replace(scheme="int4") if rank else config("minmax", "tensor")
    _record(results, "config_differs", lambda: calibrator(other, data[:1]).all_reduce())
    narrow = [b[:, : 12 - rank] for b in data[:2]]
    _record(results, "shape_differs",
            lambda: calibrator(config("percentile", "channel"), narrow).all_reduce())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
