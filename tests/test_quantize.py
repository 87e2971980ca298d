"""gq.quantize (gpuquant/quantize.py): what it refuses (empty tensors, dtypes, non-finite values,
axes and channels that do not fit the input, unknown backends), ignore_nonfinite, and given qparams."""

import warnings

import numpy as np
import pytest
from conftest import codes_of

import gpuquant as gq


def test_empty_tensor():
    with pytest.raises(gq.EmptyTensorError, match="empty"):
        gq.quantize(np.zeros((0, 4), np.float32))
    with pytest.raises(gq.EmptyTensorError):
        gq.calibrate(np.array([], np.float32))


@pytest.mark.parametrize("x", [np.arange(4), np.ones(3, bool), np.ones(2, np.complex64)])
def test_bad_dtypes(x):
    with pytest.raises(gq.InvalidDtypeError, match="accepted"):
        gq.quantize(x)


def test_nonfinite_reports_count_and_first_index():
    x = np.ones((3, 4), np.float32)
    x[1, 2] = np.nan
    x[2, 0] = np.inf
    for cfg in [gq.QuantConfig(), gq.QuantConfig.int8_per_channel(),
                gq.QuantConfig(calibration="percentile"), gq.QuantConfig.int4_per_group(2)]:
        with pytest.raises(gq.NonFiniteError, match=r"2 non-finite.*index \(1, 2\).*ignore_nonfinite"):
            gq.quantize(x, cfg)


def test_ignore_nonfinite_calibrates_on_finite_values():
    x = np.array([[1.0, np.nan, -2.0, np.inf], [np.nan, np.nan, np.nan, np.nan]], np.float32)
    cfg = gq.QuantConfig.int8_per_channel().replace(ignore_nonfinite=True)
    qt = gq.quantize(x, cfg)
    assert qt.scale.tolist() == [np.float32(2) / np.float32(127), 1.0]
    codes = qt.data.tolist()
    assert codes[0] == [64, 0, -127, 127] and codes[1] == [0, 0, 0, 0]
    pct = gq.calibrate(x, cfg.replace(calibration=gq.Percentile(0, 100)))
    np.testing.assert_array_equal(pct.scale, qt.scale)


def test_float64_beyond_float32_is_infinite():
    x = np.array([1.0, 1e39, -2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        qt = gq.quantize(x, gq.QuantConfig(ignore_nonfinite=True))
        assert codes_of(qt).tolist() == [64, 127, -127]
        assert qt.scale == np.float32(2) / np.float32(127)
        per_channel = gq.quantize(x.reshape(1, 3), gq.QuantConfig.int8_per_channel().replace(
            ignore_nonfinite=True))
        assert codes_of(per_channel).tolist() == [[64, 127, -127]]
        for cfg in (gq.QuantConfig(), gq.QuantConfig.int4_per_group(2)):
            with pytest.raises(gq.NonFiniteError, match=r"1 non-finite .* 1e\+39 at index \(1,\)"):
                gq.quantize(x, cfg)


def test_axis_and_channels():
    x = np.ones((4, 6), np.float32)
    with pytest.raises(gq.InvalidShapeError, match=r"axis=2 .* accepted: -2 \.\. 1"):
        gq.quantize(x, gq.QuantConfig.int8_per_channel(axis=2))
    with pytest.raises(gq.InvalidShapeError, match="axis=-3"):
        gq.quantize(x, gq.QuantConfig.int8_per_channel(axis=-3))
    with pytest.raises(gq.InvalidChannelCountError, match="num_channels=5 .* 4 channel"):
        gq.quantize(x, gq.QuantConfig.int8_per_channel(num_channels=5))
    assert gq.quantize(x, gq.QuantConfig.int4_per_channel(num_channels=6, axis=-1)).scale.shape == (6,)
    with pytest.raises(gq.InvalidShapeError, match="0-d"):
        gq.quantize(np.float32(1), gq.QuantConfig.int8_per_channel())


def test_backends():
    x = np.ones(4, np.float32)
    with pytest.raises(gq.BackendUnavailableError, match="accepted"):
        gq.quantize(x, backend="cuda")
    with pytest.raises(gq.BackendUnavailableError, match="backend='numpy'"):
        gq.quantize(x, backend="triton")


def test_calibrate_then_quantize_with_qparams(rng):
    x = rng.standard_normal((8, 20)).astype(np.float32)
    cfg = gq.QuantConfig.int4_per_group(8, symmetric=False)
    params = gq.calibrate(x, cfg)
    assert params.scale.shape == (8, 3) and params.zero_point.dtype == np.int32
    a = gq.quantize(x, cfg)
    b = gq.quantize(x, cfg, qparams=params)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.scale, params.scale)
