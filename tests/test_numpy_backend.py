"""The library's blocked, threaded NumPy path against the plain implementation in naive.py."""

import numpy as np
import pytest
from conftest import as_numpy, codes_of
from naive import naive_dequantize, naive_quantize

import gpuquant as gq

SCHEMES = [("int4", 4), ("int8", 8), ("int16", 16)]
LAYOUTS = [
    ((37, 29), dict(granularity="tensor")),
    ((37, 29), dict(granularity="channel", axis=0)),
    ((37, 29), dict(granularity="channel", axis=-1)),
    ((3, 5, 4, 7), dict(granularity="channel", axis=1)),
    ((3, 5, 4, 7), dict(granularity="channel", axis=-2)),
    ((6, 45), dict(granularity="group", group_size=16)),   # short last group
    ((6, 45), dict(granularity="group", group_size=5)),    # odd group size
    ((2, 3, 33), dict(granularity="token")),
    ((1, 31), dict(granularity="group", group_size=8)),    # one row
    ((31, 1), dict(granularity="channel", axis=0)),        # one column
]


def _check(x, cfg, kw, bits, symmetric, pct=None):
    qt = gq.quantize(x, cfg)
    codes, scale, zp = naive_quantize(as_numpy(x), bits, symmetric, kw["granularity"],
                                      kw.get("axis", 0), kw.get("group_size"), pct)
    np.testing.assert_array_equal(as_numpy(qt.scale), scale)
    np.testing.assert_array_equal(as_numpy(qt.zero_point), zp)
    np.testing.assert_array_equal(codes_of(qt), codes)
    y = naive_dequantize(codes, scale, zp, codes.shape, kw["granularity"], kw.get("axis", 0),
                         kw.get("group_size"))
    np.testing.assert_array_equal(as_numpy(qt.dequantize(dtype="float32")), y)
    return qt


@pytest.mark.parametrize("scheme,bits", SCHEMES)
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("shape,kw", LAYOUTS)
def test_matches_naive(rng, scheme, bits, symmetric, shape, kw):
    x = (rng.standard_normal(shape) * 3 + 0.5).astype(np.float32)
    cfg = gq.QuantConfig(scheme=scheme, symmetric=symmetric, **kw)
    _check(x, cfg, kw, bits, symmetric)


@pytest.mark.parametrize("shape,kw", LAYOUTS)
def test_percentile_matches_naive(rng, shape, kw):
    x = rng.standard_t(2, shape).astype(np.float32)
    pct = (0.5, 99.5)
    cfg = gq.QuantConfig(scheme="int8", symmetric=False, calibration=gq.Percentile(*pct), **kw)
    _check(x, cfg, kw, 8, False, pct)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_input_dtypes_match_float32_rounding(rng, dtype):
    x = rng.standard_normal((9, 40)).astype(dtype)
    kw = dict(granularity="group", group_size=16)
    qt = _check(x, gq.QuantConfig(scheme="int4", symmetric=False, **kw), kw, 4, False)
    assert qt.dequantize().dtype == dtype


@pytest.mark.parametrize("kw", [dict(granularity="group", group_size=128),
                                dict(granularity="channel", axis=0),
                                dict(granularity="channel", axis=1),
                                dict(granularity="tensor")])
def test_large_blocked_threaded_path(rng, kw):
    # 300k elements: several blocks, two threads, rows split across blocks for axis=1
    x = rng.standard_normal((600, 500)).astype(np.float32)
    x[:, 7] *= 40
    _check(x, gq.QuantConfig(scheme="int4", symmetric=False, **kw), kw, 4, False)


def test_long_rows_are_split_into_column_blocks(rng):
    x = rng.standard_normal((2, 300_001)).astype(np.float32)
    for kw in [dict(granularity="token"), dict(granularity="group", group_size=1000)]:
        _check(x, gq.QuantConfig(scheme="int4", symmetric=True, **kw), kw, 4, True)
    x = rng.standard_normal((3, 66_001)).astype(np.float32)
    kw = dict(granularity="channel", axis=-1)
    _check(x, gq.QuantConfig(scheme="int4", symmetric=False, **kw), kw, 4, False)


def test_non_contiguous_and_zero_d(rng):
    x = rng.standard_normal((40, 30)).astype(np.float32).T[::2]
    assert not x.flags.c_contiguous
    kw = dict(granularity="channel", axis=1)
    _check(x, gq.QuantConfig(scheme="int8", **kw), kw, 8, True)
    zero_d = np.float32(-2.5)
    qt = gq.quantize(zero_d, gq.QuantConfig.int4_symmetric())
    assert qt.data.shape == (1,) and qt.shape == ()
    assert codes_of(qt) == 7 * np.sign(-1)
    assert qt.dequantize() == np.float32(-2.5)


def test_lists_and_scalars_go_through_asarray():
    qt = gq.quantize([[1.0, -2.0], [0.5, 0.25]], gq.QuantConfig.int8_symmetric())
    assert qt.shape == (2, 2) and qt.dtype == "float64"
    assert gq.quantize(3.0).shape == ()
