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
    from gpuquant.backends.numpy.order_stats import unit_percentiles
    from gpuquant.core.layout import Layout

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


# ------------------------------------------------------------------ entropy and MSE
def _naive_entropy_range(values, bins, nq):
    """Histogram by the stated bin rule, TensorRT's search one candidate at a time."""
    from naive import naive_kl_best

    v = np.asarray(values, np.float32).reshape(-1)
    amax = np.float32(np.abs(v).max())
    scale = np.float32(bins / amax)
    idx = np.minimum(np.floor(np.abs(v) * scale), bins - 1).astype(np.int64)
    hist = np.bincount(idx, minlength=bins)
    best, _ = naive_kl_best(hist, nq)
    return np.float32(best * (np.float64(amax) / bins))


@pytest.mark.parametrize("scheme,nq", [("int8", 128), ("int4", 8)])
def test_entropy_threshold_matches_naive_search(rng, scheme, nq):
    x = rng.standard_normal((3, 5000)).astype(np.float32)
    x[0, :4] = 25.0
    x[2] *= 0.01
    cfg = gq.QuantConfig(scheme=scheme, granularity="channel", calibration=gq.Entropy(512))
    got = gq.calibrate(x, cfg)
    for c in range(3):
        t = _naive_entropy_range(x[c], 512, nq)
        assert got.scale[c] == t / np.float32(cfg.qmax)
    whole = gq.calibrate(x, cfg.replace(granularity="tensor", axis=0))
    assert whole.scale == _naive_entropy_range(x, 512, nq) / np.float32(cfg.qmax)


def test_entropy_clips_outliers_and_keeps_the_body(rng):
    x = rng.laplace(size=200_000).astype(np.float32)
    x[:5] = 80.0
    mm = gq.quantize(x, gq.QuantConfig(scheme="int4"))
    en = gq.quantize(x, gq.QuantConfig(scheme="int4", calibration="entropy"))
    assert en.scale < mm.scale / 3
    assert gq.sqnr(x, en.dequantize()) > gq.sqnr(x, mm.dequantize())
    body = slice(5, None)
    assert gq.sqnr(x[body], en.dequantize()[body]) > gq.sqnr(x[body], mm.dequantize()[body]) + 10


def test_entropy_asymmetric_clips_each_side(rng):
    x = np.abs(rng.standard_normal(50_000)).astype(np.float32) + 0.5
    x[:3] = 40.0
    cfg = gq.QuantConfig(symmetric=False, calibration="entropy")
    t = _naive_entropy_range(x, 2048, 128)
    expected = gq.calibrate(np.array([x.min(), t], np.float32), gq.QuantConfig(symmetric=False))
    got = gq.calibrate(x, cfg)
    assert got.scale == expected.scale and got.zero_point == expected.zero_point


def _errors(x, lo, hi, cfg, factors):
    from naive import codes_of as naive_codes
    from naive import qparams as naive_qparams

    out = []
    for f in factors:
        s, z = naive_qparams(np.float32(lo * f), np.float32(hi * f), cfg.bits, cfg.symmetric)
        q = naive_codes(x, s, z, cfg.bits, cfg.symmetric)
        y = ((q - z).astype(np.float32) * s).astype(np.float64)
        out.append(float(np.sum((y - x.astype(np.float64)) ** 2)))
    return np.array(out)


@pytest.mark.parametrize("scheme,symmetric", [("int4", True), ("int8", False)])
def test_mse_matches_naive_search_and_never_loses_to_minmax(rng, scheme, symmetric):
    x = rng.standard_t(3, (4, 3000)).astype(np.float32)
    cfg = gq.QuantConfig(scheme=scheme, symmetric=symmetric, granularity="channel",
                         calibration=gq.MSE(40))
    got = gq.calibrate(x, cfg)
    minmax = gq.calibrate(x, cfg.replace(calibration="minmax"))
    factors = (1.0 - np.arange(40) / 40).astype(np.float32)
    for c in range(4):
        lo, hi = x[c].min(), x[c].max()
        errs = _errors(x[c], lo, hi, cfg, factors)
        k = np.flatnonzero(errs <= errs.min() * (1 + 1e-9))[0]
        from naive import qparams as naive_qparams

        s, z = naive_qparams(np.float32(lo * factors[k]), np.float32(hi * factors[k]), cfg.bits,
                             symmetric)
        assert got.scale[c] == s and got.zero_point[c] == z
        assert errs[k] <= errs[0]  # f = 1 is min/max
    q_mse = gq.quantize(x, cfg)
    q_mm = gq.quantize(x, cfg.replace(calibration="minmax"))
    assert q_mse.quantization_error(x) <= q_mm.quantization_error(x)
    if scheme == "int4":  # 16 levels on heavy tails: clipping pays
        assert not np.array_equal(got.scale, minmax.scale)


def test_mse_and_entropy_per_group_and_configs(rng):
    x = rng.standard_normal((6, 200)).astype(np.float32)
    for cal in (gq.MSE(), gq.Entropy(256)):
        cfg = gq.QuantConfig.int4_per_group(64).replace(calibration=cal)
        qt = gq.quantize(x, cfg)
        assert qt.scale.shape == (6, 4)
        assert gq.QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert str(gq.QuantConfig(calibration="mse").calibration) == "mse"


# --------------------------------------------------------------- streamed histograms
def _stream(cfg, batches, **kw):
    cal = gq.Calibrator(cfg, **kw)
    for b in batches:
        cal.update(b)
    return cal


def test_streamed_percentile_is_within_one_bin_of_exact(rng):
    batches = [rng.standard_normal((n, 16)).astype(np.float32) * s
               for n, s in [(300, 0.5), (500, 1.0), (200, 4.0)]]  # the range grows twice
    cfg = gq.QuantConfig(granularity="channel", axis=-1, symmetric=False,
                         calibration=gq.Percentile(1, 99))
    cal = _stream(cfg, batches, bins=1024)
    lo, hi = cal.range()
    whole = np.concatenate(batches)
    exact_lo = np.percentile(whole, 1, axis=0)
    exact_hi = np.percentile(whole, 99, axis=0)
    state = cal.state_dict()["histogram"]
    width = 2 * state["radius"] / 1024
    top = np.abs(whole).max(axis=0)  # R: the power of two strictly above max|x|
    assert np.all(state["radius"] > top) and np.all(state["radius"] <= 2 * top)
    assert np.all(np.abs(lo - exact_lo) <= width) and np.all(np.abs(hi - exact_hi) <= width)
    assert np.all(state["counts"].sum(axis=1) == whole.shape[0])  # growing dropped nothing


def test_streamed_histograms_merge_exactly(rng):
    batches = [rng.standard_normal((64, 8)).astype(np.float32) * (i + 1) for i in range(6)]
    for cal in (gq.Percentile(0.5, 99.5), gq.Entropy(), gq.MSE(20)):
        cfg = gq.QuantConfig(scheme="int8", granularity="channel", axis=-1, calibration=cal)
        single = _stream(cfg, batches)
        a, b = _stream(cfg, batches[0::2]), _stream(cfg, batches[1::2])
        merged = a.merge(gq.Calibrator.from_state_dict(b.state_dict()))
        np.testing.assert_array_equal(merged.state_dict()["histogram"]["counts"],
                                      single.state_dict()["histogram"]["counts"])
        for x, y in zip(merged.qparams(), single.qparams()):
            np.testing.assert_array_equal(x, y)


def test_streamed_entropy_and_mse_behave(rng):
    batches = [rng.laplace(size=(20_000,)).astype(np.float32) for _ in range(3)]
    batches[1][:4] = 90.0
    whole = np.concatenate(batches)
    minmax = gq.calibrate(whole, gq.QuantConfig(scheme="int4"))
    ent = _stream(gq.QuantConfig(scheme="int4", calibration="entropy"), batches).qparams()
    assert ent.scale < minmax.scale / 3
    mse_cfg = gq.QuantConfig(scheme="int4", calibration="mse")
    mse = _stream(mse_cfg, batches).qparams()
    err = gq.quantize(whole, mse_cfg, qparams=mse).quantization_error(whole)
    assert err < gq.quantize(whole, gq.QuantConfig(scheme="int4")).quantization_error(whole)
    with pytest.raises(gq.InvalidCalibrationError, match="momentum"):
        gq.Calibrator(mse_cfg, momentum=0.1)


def test_order_key_orders_floats_and_is_its_own_inverse(rng):
    """The host's float -> sort-key map (kernels/select.py writes the same on the device)."""
    from gpuquant.calibration.order import order_key

    values = np.array([-np.inf, -3e38, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1e-40, 1.0, np.inf],
                      np.float32)
    keys = order_key(values.view(np.int32))
    assert np.all(np.diff(keys.astype(np.int64)) > 0)
    np.testing.assert_array_equal(order_key(keys).view(np.float32), values)
    x = rng.standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(np.sort(order_key(x.view(np.int32))),
                                  order_key(np.sort(x).view(np.int32)))
