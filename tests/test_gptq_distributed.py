"""GPTQ on two gloo ranks (tests/gptq_dist_worker.py under torchrun): the Hessians are summed
across the ranks, so both ranks hold the same codes, equal to one process given all the data
within the tolerance of a float64 sum in another order (FLOAT_CODE_FRACTION of the codes)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch.distributed")

import gptq_dist_worker as w  # noqa: E402
from test_distributed import _free_port  # noqa: E402

from gpuquant.model.gptq import FLOAT_CODE_FRACTION  # noqa: E402

WORKER = Path(__file__).with_name("gptq_dist_worker.py")


def test_two_ranks_equal_one_process(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "--max-restarts=0",
           str(WORKER), str(tmp_path)]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    ranks = [dict(np.load(tmp_path / f"rank{r}.npz")) for r in range(2)]
    one = w.quantized(w.batches())
    assert set(ranks[0]) == set(one) == set(ranks[1])
    for key, want in one.items():
        assert np.array_equal(ranks[0][key], ranks[1][key]), key  # every rank solves alike
        got = ranks[0][key]
        if key.endswith("qdata"):
            assert np.mean(got != want) <= FLOAT_CODE_FRACTION, key
        elif key.endswith("scale"):
            assert np.allclose(got, want, rtol=1e-6), key
        else:
            assert np.mean(got != want) <= FLOAT_CODE_FRACTION, key


def test_one_rank_alone_differs_from_all_the_data():
    """The check above is not vacuous: rank 0's share alone gives other codes."""
    data = w.batches()
    alone, every = w.quantized([data[i] for i in w.SHARES[0]]), w.quantized(data)
    assert not np.array_equal(alone["2/qdata"], every["2/qdata"])
