"""The histogram kernel (kernels/histogram.py) against the reference, count for count."""

import numpy as np
import pytest
from conftest import CUDA, INTERPRET

import gpuquant as gq
from gpuquant.backends.array_ops import NumpyOps
from gpuquant.backends.numpy.backend import NumpyBackend
from gpuquant.backends.numpy.calibration import abs_histogram
from gpuquant.calibration.histograms import radius_above
from gpuquant.core.layout import Layout

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not (CUDA or INTERPRET):
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

from gpuquant.backends.triton import backend as launchers  # noqa: E402
from gpuquant.backends.triton import calibration as triton_calibration  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"


def _amax(x, layout):
    lo, hi = NumpyBackend().minmax(x.reshape(layout.rows, layout.cols),
                                   layout, ignore_nonfinite=True)
    return np.maximum(np.abs(lo), np.abs(hi)).astype(np.float32)


@pytest.mark.parametrize("kw", [dict(granularity="tensor"), dict(granularity="token"),
                                dict(granularity="channel", axis=-1),
                                dict(granularity="channel", axis=0),
                                dict(granularity="group", group_size=5)],
                         ids=lambda kw: f"{kw['granularity']}{kw.get('axis', '')}")
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("bins", [7, 64])
def test_histogram_counts_equal_reference(monkeypatch, rng, kw, signed, bins):
    monkeypatch.setattr(triton_calibration, "_BLOCK", 8)  # several slices and blocks a unit
    monkeypatch.setattr(triton_calibration, "_MAX_PROGRAMS", 3)
    x = (rng.standard_normal((4, 13)) * 3).astype(np.float32)
    x[0, :3] = [np.nan, np.inf, -0.0]
    x[1] = 0.0  # a unit whose amax is 0
    x[2, 4:7] = [1e-40, -1e-40, -1e-45]  # subnormals: a negative one is below zero
    x[3, :2] = [2.0, -4.0]  # powers of two
    layout = Layout.of(x.shape, gq.QuantConfig(**kw))
    amax = _amax(x, layout)
    if signed:  # as the Calibrator bins: a power of two strictly above, bins a power of two
        amax, bins = radius_above(amax).astype(np.float32), 8 if bins == 7 else bins
    want = abs_histogram(NumpyOps(), x.reshape(layout.rows, layout.cols), layout, amax, bins,
                         signed)
    be = launchers.TritonBackend()
    got = be.abs_histogram(torch.from_numpy(x).to(DEVICE).reshape(layout.rows, layout.cols),
                           layout, torch.from_numpy(np.asarray(amax)).to(DEVICE), bins, signed)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.cpu().numpy(), want)


def test_many_bins_fall_back_to_array_ops(monkeypatch, rng):
    monkeypatch.setattr(triton_calibration, "HIST_MAX_BINS", 16)
    x = rng.standard_normal((3, 9)).astype(np.float32)
    layout = Layout.of(x.shape, gq.QuantConfig(granularity="token"))
    amax = _amax(x, layout)
    got = launchers.TritonBackend().abs_histogram(torch.from_numpy(x).to(DEVICE), layout,
                                                  torch.from_numpy(amax).to(DEVICE), 40)
    want = abs_histogram(NumpyOps(), x, layout, amax, 40)
    np.testing.assert_array_equal(got.cpu().numpy(), want)
