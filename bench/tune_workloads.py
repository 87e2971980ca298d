"""What the tuning sweep runs: workloads per kernel, their outputs and their launches.

A workload is a bench operation (bench/ops.py, gpuquant's callable only) or
one of the two that only the sweep needs. The launch recorder tells which
kernels a workload launches and with what parameters, without running them.
"""

from __future__ import annotations

import dataclasses
import math

# Which operations launch each kernel, where the launch recorder sees none (launchers that
# do not go through gpuquant.backends.triton.launch yet). Otherwise the recorder decides.
USES = {
    "fused_units_kernel": ["quant-int4-g128-asym", "quant-int4-g128-sym", "quant-int8-channel",
                           "dynamic-per-token"],
    "quantize_tile_kernel": ["quant-int4-g128-given"],
    "dequantize_units_kernel": ["dequant-int4-g128", "dequant-int8-channel"],
    "dequantize_tile_kernel": ["dequant-int8-channel-last"],  # the other layouts (per column)
    "segment_minmax_kernel": ["minmax-group", "minmax-channel"],
    "column_minmax_kernel": ["minmax-channel-last"],
}


def plan_clear() -> None:
    """Forget cached launch plans, so that a forced configuration is read."""
    from gpuquant.core.plan import clear

    clear()


@dataclasses.dataclass
class Workload:
    op: str
    fn: object
    bytes_moved: int


def make_workload(op: str, x, backend: str) -> Workload:
    """A bench operation (bench/ops.py), or one of the two that only the sweep needs."""
    import gpuquant as gq

    from .ops import _params_bytes, _read_bytes, build

    rows, cols = x.shape
    if op == "quant-int4-g128-given":  # quantize with given qparams: the tile kernel
        cfg = gq.QuantConfig.int4_per_group(128)
        params = gq.calibrate(x, cfg, backend=backend)
        units = rows * math.ceil(cols / 128)
        return Workload(op, lambda: gq.quantize(x, cfg, qparams=params, backend=backend),
                        _read_bytes(x) + rows * cols // 2 + _params_bytes(units))
    if op == "minmax-channel-last":  # channels along the last axis: the column reduction
        cfg = gq.QuantConfig.int8_per_channel(axis=1)
        return Workload(op, lambda: gq.calibrate(x, cfg, backend=backend),
                        _read_bytes(x) + _params_bytes(cols))
    if op == "dequant-int8-channel-last":  # channels along the last axis: the tile kernel
        qt = gq.quantize(x, gq.QuantConfig.int8_per_channel(axis=1), backend=backend)
        return Workload(op, qt.dequantize, rows * cols + _read_bytes(x) + _params_bytes(cols))
    case = build(op, x, "torch", backend=backend, peers=False)
    return Workload(op, case.ours, case.bytes_moved)


def tensors_of(result) -> list:
    """The arrays of a result (QuantizedTensor, QParams, tensor or tuple), for exact compares."""
    if hasattr(result, "zero_point"):
        names = ("data", "scale", "zero_point") if hasattr(result, "data") else \
            ("scale", "zero_point")
        return [getattr(result, n) for n in names]
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in tensors_of(r)]
    return [result]


def same_bits(a: list, b: list) -> bool:
    import torch

    return len(a) == len(b) and all(
        x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


def signature(workloads: list[Workload]) -> tuple:
    """What the workloads launch (kernel, grid, warps, constexprs), recorded, not run."""
    from gpuquant.backends.triton.launch import recording

    plan_clear()
    with recording() as launches:
        for w in workloads:
            w.fn()
    return tuple((la.name, la.grid, la.num_warps, tuple(sorted(la.constexprs.items())))
                 for la in launches)


def uses_by_recording(workloads: dict[str, Workload], kernels) -> dict[str, list[str]]:
    """kernel -> ops that launch it, as the launch recorder sees them; USES where it sees
    no launch at all."""
    from gpuquant.backends.triton.launch import recording

    seen: dict[str, list[str]] = {}
    for op, w in workloads.items():
        try:
            with recording() as launches:
                w.fn()
        except Exception as exc:  # noqa: BLE001 - the static table answers for this op
            print(f"# recording {op} failed ({type(exc).__name__}: {exc}); using the static table")
            launches = []
        for la in launches:
            seen.setdefault(la.name, [])
            if op not in seen[la.name]:
                seen[la.name].append(op)
    plan_clear()
    if not seen:
        print("# the launch recorder saw no launch: kernels are matched to ops by bench.tune.USES")
        return {k: USES.get(k, []) for k in kernels}
    return {k: seen.get(k, []) for k in kernels}
