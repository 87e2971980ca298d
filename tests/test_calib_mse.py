"""The NumPy MSE sweep, blocked over whole units, gives the unblocked sweep's bits."""

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.backends.numpy import calibration as numpy_calibration
from gpuquant.backends.numpy.backend import NumpyBackend
from gpuquant.calibration.searches import mse_factors
from gpuquant.core.layout import Layout
from gpuquant.core.qparams import compute_qparams


def _unblocked(x2, layout, lo, hi, factors, cfg):
    """Every unit matrix at once, one candidate at a time (the sweep before blocking)."""
    from gpuquant.backends.array_ops import NumpyOps
    from gpuquant.calibration.order import unit_matrices

    n_cand = len(factors)
    shape2d = layout.params_2d_shape()
    lo, hi = np.asarray(lo).reshape(-1, 1), np.asarray(hi).reshape(-1, 1)
    scale, zp = compute_qparams(lo * factors, hi * factors, cfg.qmin, cfg.qmax, cfg.symmetric)
    inv = np.float32(1) / scale
    params = [p.reshape(*shape2d, n_cand) for p in (inv, scale, zp.astype(np.float32))]
    errors = np.zeros((*shape2d, n_cand), np.float64)
    for index, m in unit_matrices(x2, layout, NumpyOps()):
        m = np.where(np.isfinite(m), m, np.float32(0))
        for c in range(n_cand):
            i, s, z = (p[index][..., c, None] for p in params)
            q = np.clip(np.rint(m * i) + z, cfg.qmin, cfg.qmax)
            d = ((q - z) * s).astype(np.float64) - m.astype(np.float64)
            errors[index][..., c] = np.einsum("...j,...j->...", d, d)
    return errors.reshape(-1, n_cand)


@pytest.mark.parametrize("shape,kw", [
    ((9, 50), dict(granularity="channel", axis=0)),      # blocks of 2 rows and a lone row
    ((3, 40), dict(granularity="channel", axis=-1)),
    ((4, 3, 10), dict(granularity="channel", axis=1)),
    ((5, 45), dict(granularity="group", group_size=16)),
    ((1, 64), dict(granularity="token")),
    ((6, 30), dict(granularity="tensor")),
    ((3, 20000), dict(granularity="token")),  # einsum sums a long lone row differently
])
@pytest.mark.parametrize("scheme,symmetric", [("int8", True), ("int4", False), ("int16", True),
                                              ("int16", False)])
def test_blocked_sweep_gives_the_same_bits(monkeypatch, rng, shape, kw, scheme, symmetric):
    monkeypatch.setattr(numpy_calibration, "_MSE_BLOCK", 100)  # a few rows per block
    x = rng.standard_t(3, shape).astype(np.float32)
    x.reshape(-1)[3] = np.nan
    x.reshape(-1)[0] = -0.0
    cfg = gq.QuantConfig(scheme=scheme, symmetric=symmetric, calibration="mse",
                         ignore_nonfinite=True, **kw)
    layout = Layout.of(shape, cfg)
    x2 = x.reshape(layout.rows, layout.cols)
    lo, hi = NumpyBackend().minmax(x2, layout, ignore_nonfinite=True)
    factors = mse_factors(17)
    got = numpy_calibration.mse_errors(x2, layout, lo, hi, factors, cfg)
    want = _unblocked(x2, layout, lo, hi, factors, cfg)
    np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))


@pytest.mark.parametrize("shape,kw", [
    ((3, 45), dict(granularity="group", group_size=16)),  # ragged last group: one launch
    ((2, 3, 4, 9), dict(granularity="channel", axis=1)),  # channels shared by rows
    ((5, 20), dict(granularity="channel", axis=-1)),
])
def test_triton_mse_choices_equal_reference(rng, shape, kw):
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    from conftest import CUDA, INTERPRET

    if not (CUDA or INTERPRET):
        pytest.skip("needs a CUDA device or TRITON_INTERPRET=1")
    x = rng.standard_t(3, shape).astype(np.float16)
    device = "cuda" if CUDA and not INTERPRET else "cpu"
    for scheme, symmetric in (("int4", False), ("int8", True)):
        cfg = gq.QuantConfig(scheme=scheme, symmetric=symmetric, calibration=gq.MSE(9), **kw)
        got = gq.calibrate(torch.from_numpy(x).to(device), cfg, backend="triton")
        want = gq.calibrate(x, cfg, backend="numpy")
        np.testing.assert_array_equal(got.scale.cpu().numpy(), want.scale)
        np.testing.assert_array_equal(got.zero_point.cpu().numpy(), want.zero_point)


def test_factors_built_on_the_device_equal_the_host_ones():
    torch = pytest.importorskip("torch")
    from gpuquant.backends.array_ops import TorchOps

    like = torch.zeros(1)
    for n in (1, 3, 7, 100, 999):
        got = mse_factors(n, TorchOps(), like)
        assert got.dtype == torch.float32
        np.testing.assert_array_equal(got.numpy(), mse_factors(n))
