import numpy as np
import pytest
from naive import percentile as naive_percentile

import gpuquant as gq


def test_percentile_interpolates_fractional_bounds(rng):
    x = rng.standard_normal(10_001).astype(np.float32)
    params = gq.calibrate(x, gq.QuantConfig(symmetric=False, calibration=gq.Percentile(0.01, 99.99)))
    s = np.sort(x)
    lo, hi = naive_percentile(s, 0.01), naive_percentile(s, 99.99)
    expected = gq.calibrate(np.array([lo, hi], np.float32), gq.QuantConfig(symmetric=False))
    np.testing.assert_array_equal(params.scale, expected.scale)
    np.testing.assert_array_equal(params.zero_point, expected.zero_point)
    # the contract's interpolation agrees with NumPy's default percentile to one float32 ulp
    np.testing.assert_allclose([lo, hi], np.percentile(x.astype(np.float64), [0.01, 99.99]),
                               rtol=2 ** -23)


def test_percentile_of_small_units():
    x = np.array([[4.0, 1.0, 3.0, 2.0]], np.float32)
    from gpuquant.backends.order_stats import unit_percentiles
    from gpuquant.layout import Layout

    layout = Layout.of(x.shape, gq.QuantConfig(granularity="token"))
    lo, hi = unit_percentiles(x, layout, 25.0, 90.0)
    assert lo.tolist() == [1.75] and hi.tolist() == [np.float32(3.7)]
    one = Layout.of((1, 1), gq.QuantConfig(granularity="token"))
    assert unit_percentiles(np.array([[5.0]], np.float32), one, 0.0, 100.0)[1].tolist() == [5.0]


def test_percentile_clips_outliers(rng):
    x = rng.standard_normal(100_000).astype(np.float32)
    x[:10] = 1000.0
    mm = gq.quantize(x, gq.QuantConfig.int8_symmetric())
    pc = gq.quantize(x, gq.QuantConfig(calibration=gq.Percentile(0.1, 99.9)))
    assert pc.scale < mm.scale / 100
    body = slice(10, None)
    assert gq.sqnr(x[body], pc.dequantize()[body]) > gq.sqnr(x[body], mm.dequantize()[body]) + 20


def test_calibrator_stream_equals_concatenation(rng):
    cfg = gq.QuantConfig.int8_per_channel(axis=-1)
    batches = [rng.standard_normal((n, 24)).astype(np.float32) * (i + 1) for i, n in enumerate([5, 9, 1])]
    cal = gq.Calibrator(cfg)
    for b in batches:
        cal.update(b)
    whole = gq.calibrate(np.concatenate(batches), cfg)
    np.testing.assert_array_equal(cal.qparams().scale, whole.scale)
    assert cal.batches == 3


def test_calibrator_merge_and_state(rng):
    cfg = gq.QuantConfig(granularity="channel", axis=-1, symmetric=False)
    batches = [rng.standard_normal((4, 8)).astype(np.float32) + i for i in range(6)]
    single, a, b = gq.Calibrator(cfg), gq.Calibrator(cfg), gq.Calibrator(cfg)
    for i, batch in enumerate(batches):
        single.update(batch)
        (a if i % 2 else b).update(batch)
    restored = gq.Calibrator.from_state_dict(b.state_dict())
    merged = a.merge(restored)
    for x, y in zip(merged.qparams(), single.qparams()):
        np.testing.assert_array_equal(x, y)
    assert merged.batches == 6


def test_calibrator_momentum_and_checks(rng):
    cal = gq.Calibrator(gq.QuantConfig(symmetric=False), momentum=0.5)
    cal.update(np.array([0.0, 4.0], np.float32)).update(np.array([-2.0, 2.0], np.float32))
    lo, hi = cal.range()
    assert (float(lo), float(hi)) == (-1.0, 3.0)
    with pytest.raises(gq.InvalidCalibrationError, match="momentum"):
        gq.Calibrator(momentum=1.5)
    per_channel = gq.Calibrator(gq.QuantConfig.int8_per_channel())
    per_channel.update(np.ones((3, 2), np.float32))
    with pytest.raises(gq.InvalidShapeError, match="earlier batches"):
        per_channel.update(np.ones((4, 2), np.float32))


def test_calibrator_rejects_mixed_backends():
    torch = pytest.importorskip("torch")
    cal = gq.Calibrator(gq.QuantConfig())
    cal.update(np.ones(3, np.float32))
    cal.update(torch.ones(3))  # torch CPU uses the numpy backend too
    assert cal.batches == 2
    cal._backend_name = "triton"  # as if earlier batches had been on the GPU
    with pytest.raises(gq.QuantizationError, match="one backend"):
        cal.update(np.ones(3, np.float32))


def test_dynamic_quantizer(rng):
    x = rng.standard_normal((3, 7, 32)).astype(np.float32)
    per_tensor = gq.DynamicQuantizer("int8")(x)
    assert per_tensor.scale.shape == ()
    per_token = gq.DynamicQuantizer("int4", symmetric=False, per_token=True)(x)
    assert per_token.scale.shape == (3, 7) and per_token.data.shape == (3, 7, 16)
    ref = gq.quantize(x, gq.QuantConfig(scheme="int4", symmetric=False, granularity="group",
                                        group_size=32))
    np.testing.assert_array_equal(per_token.data, ref.data)
    np.testing.assert_array_equal(per_token.scale, ref.scale[..., 0])
    assert gq.sqnr(x, per_token.dequantize()) > gq.sqnr(
        x, gq.DynamicQuantizer("int4", symmetric=False)(x).dequantize())
    assert "per_token=True" in repr(gq.DynamicQuantizer(per_token=True))
