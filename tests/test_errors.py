"""Bad input raises a QuantizationError subclass naming the argument and what is accepted."""

import numpy as np
import pytest

import gpuquant as gq


def test_hierarchy():
    for name in ["InvalidBitWidthError", "InvalidShapeError", "InvalidChannelCountError",
                 "EmptyTensorError", "CalibrationRequiredError", "UnsupportedSchemeError",
                 "InvalidDtypeError", "InvalidCalibrationError", "NonFiniteError",
                 "BackendUnavailableError", "FormatError"]:
        cls = getattr(gq, name)
        assert issubclass(cls, gq.QuantizationError) and issubclass(cls, ValueError)


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


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_group_size(size):
    with pytest.raises(gq.InvalidShapeError, match="group_size"):
        gq.QuantConfig(granularity="group", group_size=size)


@pytest.mark.parametrize("lower,upper", [(-1, 50), (10, 101), (60, 40), (50, 50), ("a", 9)])
def test_percentile_bounds(lower, upper):
    with pytest.raises(gq.InvalidCalibrationError, match="Percentile"):
        gq.Percentile(lower, upper)


def test_qparams_shape_and_values():
    x = np.ones((4, 6), np.float32)
    cfg = gq.QuantConfig.int8_per_channel()
    with pytest.raises(gq.InvalidShapeError, match=r"qparams.scale has shape \(6,\).*needs \(4,\)"):
        gq.quantize(x, cfg, qparams=(np.ones(6, np.float32), np.zeros(6, np.int32)))
    with pytest.raises(gq.InvalidCalibrationError, match="positive"):
        gq.quantize(x, cfg, qparams=(np.zeros(4, np.float32), np.zeros(4, np.int32)))
    with pytest.raises(gq.InvalidCalibrationError, match=r"\[0, 255\]"):
        gq.quantize(x, gq.QuantConfig.int8_asymmetric(), qparams=(np.float32(1), np.int32(300)))
    with pytest.raises(gq.QuantizationError, match="QParams"):
        gq.quantize(x, cfg, qparams=np.ones(4))


def test_unknown_scheme_and_calibrations():
    for bad in ["int3", 5, "fp8", None]:
        with pytest.raises(gq.InvalidBitWidthError, match="accepted: 'int4', 'int8', 'int16'"):
            gq.QuantConfig(scheme=bad)
    assert issubclass(gq.InvalidBitWidthError, gq.UnsupportedSchemeError)
    with pytest.raises(gq.UnsupportedSchemeError, match="granularity"):
        gq.QuantConfig(granularity="block")
    with pytest.raises(gq.UnsupportedSchemeError, match="int4 and int8"):
        gq.QuantConfig(scheme="int16", calibration="entropy")
    with pytest.raises(gq.InvalidCalibrationError, match="bins"):
        gq.Entropy(bins=1)
    with pytest.raises(gq.InvalidCalibrationError, match="bins >= 128"):
        gq.QuantConfig(scheme="int8", calibration=gq.Entropy(64))
    with pytest.raises(gq.InvalidCalibrationError, match="candidates"):
        gq.MSE(candidates=0)
    with pytest.raises(gq.UnsupportedSchemeError, match="accepted"):
        gq.QuantConfig(calibration="magic")


def test_unknown_output_dtype():
    qt = gq.quantize(np.ones(4, np.float32))
    with pytest.raises(gq.InvalidDtypeError, match="accepted: float16"):
        qt.dequantize(dtype="int8")
    with pytest.raises(gq.InvalidDtypeError, match="bfloat16"):
        qt.dequantize(dtype="bfloat16")


def test_backends():
    x = np.ones(4, np.float32)
    with pytest.raises(gq.BackendUnavailableError, match="accepted"):
        gq.quantize(x, backend="cuda")
    with pytest.raises(gq.BackendUnavailableError, match="backend='numpy'"):
        gq.quantize(x, backend="triton")


def test_calibration_required():
    with pytest.raises(gq.CalibrationRequiredError, match="update"):
        gq.Calibrator(gq.QuantConfig()).qparams()


def test_config_type_checks():
    with pytest.raises(gq.QuantizationError, match="symmetric"):
        gq.QuantConfig(symmetric="yes")
    with pytest.raises(gq.InvalidShapeError, match="group_size"):
        gq.QuantConfig(granularity="tensor", group_size=64)
    with pytest.raises(gq.QuantizationError, match="config must be"):
        gq.quantize(np.ones(3), config="int8")
