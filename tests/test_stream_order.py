"""The Calibrator's streamed histograms do not depend on batch order or split (bit for bit).

Binning at a radius R and then doubling must equal binning at 2R directly, a value
exactly at a power of two must never be clipped into the edge bin, and a unit of
zeros keeps its counts (gpuquant.calibration.histograms). Failing these, ``Calibrator.merge`` and
``all_reduce`` would differ from one process that saw the same batches.
"""

import itertools

import numpy as np
import pytest
from conftest import CUDA, INTERPRET

import gpuquant as gq
from gpuquant.backends.array_ops import NumpyOps
from gpuquant.backends.numpy.calibration import abs_histogram
from gpuquant.calibration.histograms import HistogramState, radius_above
from gpuquant.core.layout import Layout

CALIBRATIONS = [gq.Percentile(0.5, 99.5), gq.Entropy(), gq.MSE(20)]


def _state(cfg, batches, backend="numpy", bins=4096, wrap=np.asarray):
    cal = gq.Calibrator(cfg, backend=backend, bins=bins)
    for b in batches:
        cal.update(wrap(b))
    return cal


def _assert_same(a, b):
    ha, hb = a.state_dict()["histogram"], b.state_dict()["histogram"]
    np.testing.assert_array_equal(ha["radius"], hb["radius"])
    np.testing.assert_array_equal(ha["counts"], hb["counts"])
    for x, y in zip(a.qparams(), b.qparams()):
        np.testing.assert_array_equal(x, y)


def _half_and_edge(rng):
    """200k values in (-1, -0.5), then one 1.5: the range doubles after the bulk."""
    return [rng.uniform(-1.0, -0.5, 200_000).astype(np.float32), np.float32([1.5])]


def _powers_of_two(rng):
    """Values exactly at powers of two (and their negatives) with the range growing."""
    a = rng.uniform(-0.3, 0.3, 3000).astype(np.float32)
    a[:4] = [0.5, -0.5, 0.25, 2.0 ** -20]
    b = rng.uniform(-0.9, 0.9, 2000).astype(np.float32)
    b[:3] = [1.0, -1.0, 0.125]
    c = np.float32([4.0, -2.0, 3.0, 1e-40, -1e-40, -0.0])
    return [a, b, c]


@pytest.mark.parametrize("make", [_half_and_edge, _powers_of_two])
@pytest.mark.parametrize("cal", CALIBRATIONS, ids=str)
def test_batch_order_and_split_give_the_same_bits(rng, make, cal):
    batches = make(rng)
    cfg = gq.QuantConfig(scheme="int8", symmetric=False, calibration=cal)
    first = _state(cfg, batches)
    for order in itertools.permutations(batches):
        _assert_same(_state(cfg, order), first)
    _assert_same(_state(cfg, [np.concatenate(batches)]), first)  # one batch
    _assert_same(_state(cfg, [np.concatenate(batches[::-1])]), first)
    pieces = np.array_split(np.concatenate(batches[::-1]), 7)  # split elsewhere
    _assert_same(_state(cfg, pieces), first)
    merged = _state(cfg, batches[-1:]).merge(_state(cfg, batches[:-1]))
    _assert_same(merged, first)


@pytest.mark.parametrize("cal", CALIBRATIONS, ids=str)
def test_a_unit_of_zeros_keeps_its_counts(rng, cal):
    cfg = gq.QuantConfig(granularity="channel", axis=-1, calibration=cal)
    batches = [rng.standard_normal((50, 3)).astype(np.float32) * (i + 1) for i in range(3)]
    for b in batches:
        b[:, 1] = 0.0
    batches[1][:, 2] = 0.0
    batches[2][:, 2] = 1.0  # a unit at a power of two after zeros
    first = _state(cfg, batches)
    counts = first.state_dict()["histogram"]["counts"]
    np.testing.assert_array_equal(counts.sum(axis=1), [150, 150, 150])
    assert counts[1, 4096 // 2] == 150  # the zeros sit in the bin at zero
    for order in itertools.permutations(batches):
        _assert_same(_state(cfg, order), first)
    lo, hi = first.range()
    assert max(-lo[1], hi[1]) <= 2.0 ** -100 and np.all(np.isfinite(first.qparams().scale))
    zeros = _state(cfg, [np.zeros((4, 3), np.float32)])
    np.testing.assert_array_equal(zeros.state_dict()["histogram"]["counts"].sum(axis=1), 4)


@pytest.mark.parametrize("bins", [4, 64, 4096])
def test_binning_at_2r_is_doubling_the_histogram_at_r(rng, bins):
    """The bin rule against HistogramState's doubling, over tricky values."""
    x = np.concatenate([rng.standard_normal(5000) * 0.3, [0.5, -0.5, -0.25, 0.25, 1e-40,
                        -1e-40, -1e-45, 1e-45, -0.0, 0.0, 2.0 ** -30, -(2.0 ** -30)],
                        np.nextafter(np.float32(-0.5), 0) * np.ones(3)]).astype(np.float32)
    x = x[np.abs(x) < 0.5].reshape(1, -1)
    layout = Layout.of(x.shape, gq.QuantConfig())
    assert radius_above(np.abs(x).max()) == 0.5
    h = HistogramState(bins)
    for radius in (0.5, 1.0, 2.0, 2.0 ** 40):
        direct = abs_histogram(NumpyOps(), x, layout, np.float32(radius), bins, signed=True)
        if h.counts is None:
            h.grow_to(np.array([radius]))
            h.counts += direct.reshape(1, bins)
        h.grow_to(np.array([radius]))
        np.testing.assert_array_equal(h.counts, direct.reshape(1, bins))
    assert h.counts.sum() == x.size


def test_radius_is_strictly_above_and_bounded():
    got = radius_above(np.array([0.0, 1e-45, 0.5, 0.75, 1.0, 3.0e38, 2.0 ** 127], np.float32))
    np.testing.assert_array_equal(got, [2.0 ** -100, 2.0 ** -100, 1.0, 1.0, 2.0,
                                        2.0 ** 127, 2.0 ** 127])


@pytest.mark.parametrize("bins", [1000, 6, 2, 0, 2 ** 25, 12.0, True])
def test_bins_must_be_a_power_of_two(bins):
    with pytest.raises(gq.InvalidCalibrationError, match="bins"):
        gq.Calibrator(gq.QuantConfig(calibration="mse"), bins=bins)
    state = _state(gq.QuantConfig(calibration="mse"), [np.ones(3, np.float32)], bins=8)
    hist = dict(state.state_dict()["histogram"], bins=bins)
    with pytest.raises(gq.InvalidCalibrationError, match="bins"):
        HistogramState.from_state(hist)


@pytest.mark.parametrize("bins", [4096, 16384])  # 16384: torch through the array ops
@pytest.mark.parametrize("cal", CALIBRATIONS, ids=str)
def test_triton_backend_streams_the_same_bits(rng, cal, bins):
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    if not (CUDA or INTERPRET):
        pytest.skip("needs a CUDA device or TRITON_INTERPRET=1")
    device = "cuda" if CUDA and not INTERPRET else "cpu"
    batches = [b.reshape(-1, 2) for b in _powers_of_two(rng)]
    batches[0][:, 1] = 0.0  # a unit of zeros first, then other values
    batches.append(np.float32([[1.5, -0.75]] * 4))
    cfg = gq.QuantConfig(granularity="channel", axis=-1, calibration=cal)
    want = _state(cfg, batches, bins=bins)
    for order in (batches, batches[::-1]):
        got = _state(cfg, order, backend="triton", bins=bins,
                     wrap=lambda b: torch.from_numpy(np.ascontiguousarray(b)).to(device))
        _assert_same(got, want)


@pytest.mark.parametrize("cal", CALIBRATIONS, ids=str)
def test_values_past_the_radius_cap_bin_alike_in_any_order(rng, cal):
    big = np.float32([3.0e38, -2.0 ** 127, 2.0 ** 126])
    batches = [rng.standard_normal(500).astype(np.float32), big[2:], big[:2]]
    cfg = gq.QuantConfig(calibration=cal)
    first = _state(cfg, batches)
    assert first.state_dict()["histogram"]["radius"][0] == 2.0 ** 127
    for order in itertools.permutations(batches):
        _assert_same(_state(cfg, order), first)
