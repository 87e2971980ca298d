"""The entropy (KL) search picks the same bin through every array adapter, and
gq.calibrate's entropy ranges are the same bits on the NumPy and Triton backends."""

import math

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.backends.array_ops import NumpyOps
from gpuquant.backends.numpy.backend import NumpyBackend
from gpuquant.calibration.searches import _log, kl_best_bins
from gpuquant.core.layout import Layout

torch = pytest.importorskip("torch")
from gpuquant.backends.array_ops import TorchOps  # noqa: E402


def _both(hist, nq):
    """Picks through NumPy and through torch (CPU tensors: the adapter a GPU run uses)."""
    hist = np.asarray(hist, np.int64)
    want = kl_best_bins(NumpyOps(), hist, nq)
    got = kl_best_bins(TorchOps(), torch.from_numpy(hist), nq)
    return want, got.numpy()


def _abs_histograms(x, bins, **kw):
    """gq.calibrate's entropy histograms of x (the NumPy backend's abs_histogram)."""
    cfg = gq.QuantConfig(scheme="int4", calibration=gq.Entropy(bins), **kw)
    layout = Layout.of(x.shape, cfg)
    be = NumpyBackend()
    x2 = x.reshape(layout.rows, layout.cols)
    lo, hi = be.minmax(x2, layout)
    amax = np.maximum(np.abs(lo), np.abs(hi))
    return be.abs_histogram(x2, layout, amax, bins).reshape(-1, bins)


@pytest.mark.parametrize("shape", [(3, 4, 33), (2, 5, 3, 17)])
@pytest.mark.parametrize("kw", [dict(granularity="token"), dict(granularity="channel", axis=0),
                                dict(granularity="channel", axis=-1)])
@pytest.mark.parametrize("nq", [32, 8])
def test_small_histograms_pick_the_same_bin(shape, kw, nq):
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    hist = _abs_histograms(x, 64, **kw)
    want, got = _both(hist, nq)
    np.testing.assert_array_equal(got, want)
    assert ((want >= nq) & (want <= 64)).all()


# Calibrator-like histograms (radius above max|x|: empty top bins), where several candidates
# have KL = 0 exactly; before the fixed-order sums NumPy picked 54, 38, 39, 36 and torch 41,
# 40, 40, 39. The first candidates of least KL (60-digit arithmetic, tests/naive.py alike):
_TIED = [
    ([3, 3, 0, 4, 2, 2, 2, 1, 1, 1, 0, 1, 2, 0, 0, 2, 1, 3, 0, 0, 1, 0, 2, 0, 0, 0, 0, 0, 0,
      0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1], 41),
    ([1, 1, 4, 0, 0, 0, 0, 1, 2, 2, 0, 2, 1, 1, 2, 2, 0, 2, 4, 1, 0, 1, 0, 0, 2, 0, 0, 1, 0,
      0, 1, 0, 0, 0, 0, 0, 2], 38),
    ([2, 2, 2, 1, 0, 0, 0, 0, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 0, 0, 0, 0, 1, 0,
      0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 39),
    ([2, 2, 2, 2, 4, 2, 0, 0, 2, 2, 2, 0, 3, 0, 2, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 1, 1, 0, 0,
      0, 1, 1, 0, 0, 0, 1], 36),
]


def test_exact_ties_pick_the_first_least_kl_everywhere():
    from naive import naive_kl_best

    hist = np.array([h + [0] * (64 - len(h)) for h, _ in _TIED], np.int64)
    want, got = _both(hist, 32)
    expected = [best for _, best in _TIED]
    np.testing.assert_array_equal(want, expected)
    np.testing.assert_array_equal(got, expected)
    assert [naive_kl_best(h, 32)[0] for h in hist] == expected


def _random_histograms(rng, units, bins, kind):
    if kind == "sparse":        # counts 0..2: many equal groups, exact ties
        return rng.integers(0, 3, (units, bins))
    if kind == "empty_top":     # trailing empty bins (the Calibrator's folded histograms)
        h = rng.integers(0, 4, (units, bins))
        h[:, int(rng.integers(1, bins)):] = 0
        return h
    if kind == "poisson":
        return rng.poisson(rng.uniform(0.1, 50), (units, bins))
    if kind == "heavy":         # large counts: the cancellation in N * KL is widest
        return rng.integers(0, 1 << 30, (units, bins)) >> rng.integers(0, 30, (units, bins))
    h = np.zeros((units, bins), np.int64)   # one bin, or none at all (KL = inf throughout)
    h[np.arange(units), rng.integers(0, bins, units)] = rng.integers(0, 5, units)
    return h


@pytest.mark.parametrize("kind", ["sparse", "empty_top", "poisson", "heavy", "single"])
def test_random_histograms_pick_the_same_bin(kind):
    rng = np.random.default_rng(sum(map(ord, kind)))
    for _ in range(12):
        bins = int(rng.choice([8, 16, 64, 128, 512]))
        nq = int(rng.choice([q for q in (2, 8, 32, 128) if q <= bins]))
        hist = _random_histograms(rng, 8, bins, kind).astype(np.int64)
        want, got = _both(hist, nq)
        np.testing.assert_array_equal(got, want)


def test_log_is_the_same_bits_on_numpy_and_torch():
    rng = np.random.default_rng(3)
    n = np.concatenate([np.arange(1, 5000), rng.integers(1, 1 << 53, 5000),
                        [2.0 ** k for k in range(53)]]).astype(np.float64)
    want = _log(NumpyOps(), n)
    got = _log(TorchOps(), torch.from_numpy(n)).numpy()
    np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))
    assert want[0] == 0.0
    ref = np.array([math.log(v) for v in n])
    assert (np.abs(want - ref) <= 2 * np.spacing(ref)).all()


@pytest.mark.parametrize("shape,kw", [
    ((3, 4, 33), dict(granularity="token")),
    ((2, 5, 3, 17), dict(granularity="channel", axis=-1)),
    ((6, 40), dict(granularity="tensor", axis=0, symmetric=False)),
])
def test_triton_entropy_ranges_equal_reference(rng, shape, kw):
    pytest.importorskip("triton")
    from conftest import CUDA, INTERPRET

    if not (CUDA or INTERPRET):
        pytest.skip("needs a CUDA device or TRITON_INTERPRET=1")
    device = "cuda" if CUDA and not INTERPRET else "cpu"
    x = rng.standard_normal(shape).astype(np.float32)
    x.reshape(-1)[::7] = np.round(x.reshape(-1)[::7])   # repeated values: tied candidates
    for scheme, bins in (("int4", 64), ("int8", 256)):
        cfg = gq.QuantConfig(scheme=scheme, calibration=gq.Entropy(bins), **kw)
        got = gq.calibrate(torch.from_numpy(x).to(device), cfg, backend="triton")
        want = gq.calibrate(x, cfg, backend="numpy")
        np.testing.assert_array_equal(got.scale.cpu().numpy(), want.scale)
        np.testing.assert_array_equal(got.zero_point.cpu().numpy(), want.zero_point)
