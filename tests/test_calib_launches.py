"""Kernel launches, full reads of the input and host synchronisations per calibration call.

The launch recorder (gpuquant.backends.triton.launch.recording, with execute=True)
records each launch and still runs it. A launch reads the
input in full when the input's pointer is among its arguments, once per
pass of the kernel (READS). A regression to many passes fails here.
"""

import numpy as np
import pytest
from conftest import CUDA, INTERPRET

import gpuquant as gq

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not (CUDA or INTERPRET):
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

from gpuquant.backends import array_ops  # noqa: E402
from gpuquant.backends.triton import calibration as triton_calibration  # noqa: E402
from gpuquant.backends.triton.launch import recording  # noqa: E402
from gpuquant.core import nonfinite  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
READS = {"unit_radix_select_kernel": 3}  # passes over its unit inside one launch; others 1


@pytest.fixture
def recorder(monkeypatch):
    """Counts the host synchronisations: copies to the host and waits for the device."""
    syncs = []
    to_host, wait_all = array_ops.TorchOps.to_host, nonfinite.wait_all

    def counted_to_host(self, a):
        syncs.append(tuple(a.shape))
        return to_host(self, a)

    def counted_wait():
        syncs.append("wait")
        return wait_all()

    monkeypatch.setattr(array_ops.TorchOps, "to_host", counted_to_host)
    for module in (nonfinite, __import__("gpuquant.backends.triton.backend", fromlist=["x"])):
        monkeypatch.setattr(module, "wait_all", counted_wait)
    return syncs


def _run(recorder, x, cfg):
    syncs = recorder
    syncs.clear()
    with recording(execute=True) as launches:
        gq.calibrate(x, cfg, backend="triton")
    names = sorted(launch.name for launch in launches)
    reads = sum(READS.get(launch.name, 1) for launch in launches
                if any(getattr(a, "data_ptr", lambda: None)() == x.data_ptr()
                       for a in launch.args))
    return names, reads, len(syncs)


CASES = [  # (config, kernels launched, full reads of x, host synchronisations)
    (dict(granularity="tensor", calibration=gq.Percentile(1, 99)),
     ["key_histogram_kernel"] * 3 + ["finalize_qparams_kernel", "tensor_select_kernel"], 3, 1),
    (dict(granularity="tensor", calibration=gq.Percentile(1, 99), ignore_nonfinite=True),
     ["key_histogram_kernel"] * 3 + ["finalize_qparams_kernel", "tensor_select_kernel"], 3, 0),
    (dict(granularity="token", calibration=gq.Percentile(1, 99)),
     ["finalize_qparams_kernel", "unit_sort_select_kernel"], 1, 1),
    (dict(granularity="group", group_size=8, calibration=gq.Percentile(1, 99)),
     ["finalize_qparams_kernel", "unit_sort_select_kernel"], 1, 1),
    (dict(granularity="tensor", calibration=gq.Entropy(256)),
     ["finalize_qparams_kernel", "segment_minmax_kernel", "unit_histogram_kernel"], 2, 1),
    (dict(granularity="token", calibration=gq.Entropy(256)),
     ["finalize_qparams_kernel", "segment_minmax_kernel", "unit_histogram_kernel"], 2, 1),
    (dict(granularity="token", calibration=gq.MSE(8)),
     ["mse_sweep_kernel", "finalize_qparams_kernel", "finalize_qparams_kernel",
      "segment_minmax_kernel"], 2, 1),
]


@pytest.mark.parametrize("kw,kernels,reads,syncs", CASES)
def test_launches_reads_and_syncs(recorder, rng, kw, kernels, reads, syncs):
    x = torch.from_numpy(rng.standard_normal((4, 40)).astype(np.float32)).to(DEVICE)
    assert _run(recorder, x, gq.QuantConfig(**kw)) == (sorted(kernels), reads, syncs)


def test_large_units_take_one_radix_launch(recorder, rng, monkeypatch):
    monkeypatch.setattr(triton_calibration, "SORT_MAX", 16)
    x = torch.from_numpy(rng.standard_normal((3, 40)).astype(np.float32)).to(DEVICE)
    cfg = gq.QuantConfig(granularity="token", calibration=gq.Percentile(1, 99))
    assert _run(recorder, x, cfg) == (["finalize_qparams_kernel", "unit_radix_select_kernel"], 3, 1)
