"""Calibrator.all_reduce on torch.distributed: two gloo processes under torchrun on
127.0.0.1 (tests/dist_worker.py) against one process that saw every batch."""

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch.distributed")

import dist_worker as w  # noqa: E402
from conftest import CUDA  # noqa: E402

import gpuquant as gq  # noqa: E402

WORKER = Path(__file__).with_name("dist_worker.py")
CASES = [(split, method, layout) for split in w.SPLITS for method in w.METHODS for layout in w.LAYOUTS]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(out: Path, nproc: int, backend: str) -> list[dict]:
    """Run dist_worker.py on nproc ranks; what each rank held after all_reduce."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}",
           "--master-addr=127.0.0.1", f"--master-port={_free_port()}", "--max-restarts=0",
           str(WORKER), str(out)]
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               GQ_TEST_DIST_BACKEND=backend)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(nproc)]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Two gloo ranks on the CPU (one torchrun for every case)."""
    return _torchrun(tmp_path_factory.mktemp("ranks"), 2, "gloo")


def _case(ranks, case):
    """The case's arrays, after checking that both ranks hold exactly the same."""
    keys = sorted(k.split("/")[-1] for k in ranks[0] if k.startswith(case + "/"))
    assert keys == sorted(k.split("/")[-1] for k in ranks[1] if k.startswith(case + "/"))
    for key in keys:
        a, b = ranks[0][f"{case}/{key}"], ranks[1][f"{case}/{key}"]
        assert a.dtype == b.dtype and np.array_equal(a, b), (case, key)
    return {key: ranks[0][f"{case}/{key}"] for key in keys}


@pytest.mark.parametrize("split,method,layout", CASES)
def test_all_reduce_equals_one_process(ranks, split, method, layout):
    _check_one_process(ranks, split, method, layout)


def _check_one_process(ranks, split, method, layout):
    got = _case(ranks, f"{split}/{method}/{layout}")
    cfg, data = w.config(method, layout), w.batches()
    single = w.calibrator(cfg, data)
    expected = w.flat_state(single)
    params = single.qparams()
    assert np.array_equal(got["scale"], params.scale)
    assert np.array_equal(got["zero_point"], params.zero_point)
    assert got["scale"].dtype == np.float32 and got["zero_point"].dtype == np.int32
    for key, value in expected.items():  # the whole state, histogram counts included
        assert np.array_equal(got[key], value), key
    # the same state as merging the ranks' calibrators one after the other
    parts = [w.calibrator(cfg, [data[i] for i in share]) for share in w.SPLITS[split]]
    merged = parts[1].merge(parts[0]) if split == "unequal" else parts[1]
    assert all(np.array_equal(got[k], v) for k, v in w.flat_state(merged).items())


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_all_reduce_on_nccl_reduces_on_each_ranks_gpu(tmp_path):
    import torch

    nproc = min(2, torch.cuda.device_count())  # NCCL takes one GPU per rank
    got = _torchrun(tmp_path, nproc, "nccl")
    for split, method, layout in CASES:
        _check_one_process(got, split, method, layout)


def test_reduction_device_follows_the_backend(monkeypatch):
    import torch

    from gpuquant.calibration.collective import _reduce_device

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert _reduce_device(torch, "nccl") == torch.device("cuda", 3)
    for backend in ("gloo", "cpu:gloo,cuda:nccl", "mpi"):
        assert _reduce_device(torch, backend) == torch.device("cpu")


@pytest.mark.parametrize("split", list(w.SPLITS))
def test_all_reduce_of_moving_averages_weighs_ranks_by_batches(ranks, split):
    got = _case(ranks, f"{split}/momentum")
    data, cfg = w.batches(), w.config("minmax", "channel")
    parts = [w.calibrator(cfg, [data[i] for i in share], momentum=w.MOMENTUM).state_dict()
             for share in w.SPLITS[split]]
    n = [p["batches"] for p in parts]
    for key in ("lo", "hi"):
        total = sum(np.asarray(p[key], np.float64) * k for p, k in zip(parts, n) if k)
        assert np.array_equal(got[key], (total / sum(n)).astype(np.float32)), key
    if split == "empty":  # a rank without batches changes nothing
        assert np.array_equal(got["lo"], np.asarray(parts[1]["lo"], np.float32))
    assert int(got["batches"]) == 4


def test_a_rank_without_batches_goes_on_calibrating_after_all_reduce(ranks):
    got = _case(ranks, "update_after")
    data = w.batches()
    single = w.calibrator(w.config("percentile", "channel"), data + data[:1])
    assert all(np.array_equal(got[k], v) for k, v in w.flat_state(single).items())
    assert np.array_equal(got["scale"], single.qparams().scale)


def test_all_reduce_with_no_data_anywhere_keeps_calibrators_empty(ranks):
    got = _case(ranks, "nobody")
    assert int(got["batches"]) == 0 and "scale" not in got and "error" not in got


@pytest.mark.parametrize("case,error", [("config_differs", "QuantizationError: .*differ in config"),
                                        ("shape_differs", "InvalidShapeError: .*different shapes")])
def test_ranks_that_disagree_raise_on_every_rank(ranks, case, error):
    for rank in ranks:
        assert re.match(error, str(rank[f"{case}/error"])), str(rank[f"{case}/error"])


def test_all_reduce_needs_an_initialised_process_group():
    import torch.distributed as dist

    assert not dist.is_initialized()
    cal = gq.Calibrator().update(np.ones(3, np.float32))
    with pytest.raises(gq.BackendUnavailableError, match="init_process_group"):
        cal.all_reduce()
    assert cal.batches == 1


def test_all_reduce_without_torch_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    with pytest.raises(gq.BackendUnavailableError, match="pip install torch"):
        gq.Calibrator().all_reduce()
