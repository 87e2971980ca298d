"""One rank of test_gptq_distributed.py, run by torchrun: GPTQ of a tiny MLP from this rank's
share of the calibration batches, the Hessians summed across ranks; saves the codes to
OUT/rank{R}.npz."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import numpy as np

import gpuquant as gq

CONFIG = gq.QuantConfig.int4_per_group(32, symmetric=False)
SHARES = ([0, 3], [1, 2, 4])  # batch indices of rank 0 and rank 1; one process takes all


def batches():
    import torch

    rng = np.random.default_rng(11)
    mix = np.eye(64) + 0.4 * rng.standard_normal((64, 64))
    return [torch.from_numpy((rng.standard_normal((rows, 64)) @ mix).astype(np.float32))
            for rows in (30, 50, 20, 41, 64)]


def model():
    import torch

    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.GELU(),
                               torch.nn.Linear(96, 32)).eval()


def quantized(data) -> dict[str, np.ndarray]:
    m = model()
    gq.quantize_model(m, CONFIG, method="gptq", calibration=data)
    return {f"{i}/{name}": getattr(m[i], name).numpy() for i in (0, 2)
            for name in ("qdata", "scale", "zero_point")}


def main(out: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank, data = dist.get_rank(), batches()
    np.savez(out / f"rank{rank}.npz", **quantized([data[i] for i in SHARES[rank]]))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
