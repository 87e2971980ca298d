import json

import numpy as np
import pytest

import gpuquant as gq


def test_presets():
    assert gq.QuantConfig.int8_symmetric().describe() == "int8/tensor/sym/minmax"
    assert gq.QuantConfig.int8_asymmetric().symmetric is False
    c = gq.QuantConfig.int8_per_channel(num_channels=16, axis=-1)
    assert (c.granularity, c.axis, c.num_channels) == (gq.Granularity.CHANNEL, -1, 16)
    assert gq.QuantConfig.int4_symmetric().bits == 4
    assert gq.QuantConfig.int4_per_channel().granularity == "channel"
    g = gq.QuantConfig.int4_per_group()
    # one story (issue 13): symmetric by default everywhere, int4_per_group included
    assert (g.group_size, g.symmetric) == (128, True)
    assert g == gq.QuantConfig(scheme=4, granularity="group")
    assert gq.QuantConfig.int4_per_group(symmetric=False).qmin == 0
    assert gq.QuantConfig(granularity="per_group").group_size == 128


def test_scheme_compression_ratio():
    assert [gq.Scheme(s).compression_ratio for s in ("int4", "int8", "int16")] == [8.0, 4.0, 2.0]
    assert gq.Scheme.from_value(8) is gq.Scheme.INT8
    assert gq.QuantConfig(scheme=16).scheme is gq.Scheme.INT16


@pytest.mark.parametrize("cfg", [
    gq.QuantConfig(),
    gq.QuantConfig.int4_per_group(64, symmetric=False),
    gq.QuantConfig.int8_per_channel(num_channels=3, axis=-2),
    gq.QuantConfig(scheme="int16", calibration=gq.Percentile(0.5, 99.5), nibble_order="low_first",
                   ignore_nonfinite=True),
    gq.QuantConfig(granularity="token", calibration="percentile"),
])
def test_dict_roundtrip_through_json(cfg):
    d = json.loads(json.dumps(cfg.to_dict()))
    assert gq.QuantConfig.from_dict(d) == cfg


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(gq.QuantizationError, match="unknown keys"):
        gq.QuantConfig.from_dict({"scheme": "int8", "bits": 8})


def test_reprs_are_readable():
    assert repr(gq.QuantConfig.int4_per_group()) == (
        "QuantConfig(scheme='int4', granularity='group', symmetric=True, group_size=128, "
        "calibration='minmax', nibble_order='high_first')")
    assert "Percentile" not in repr(gq.QuantConfig(calibration=gq.Percentile(1, 99)))
    qt = gq.quantize(np.ones((4, 8), np.float32), gq.QuantConfig.int4_per_group(4))
    r = repr(qt)
    assert r.startswith("QuantizedTensor(shape=(4, 8), dtype=float32, scheme=int4")
    assert "granularity=group(4)" in r and "data=uint8(4, 4)" in r


def test_sizes_and_compression_ratio():
    x = np.ones((64, 256), np.float16)
    qt = gq.quantize(x, gq.QuantConfig.int4_per_group(128))
    assert qt.size_bytes == 64 * 128 + 64 * 2 * 4 + 64 * 2 * 4
    assert qt.compression_ratio == pytest.approx(64 * 256 * 2 / qt.size_bytes)
    qt8 = gq.quantize(x.astype(np.float32), gq.QuantConfig.int8_symmetric())
    assert qt8.size_bytes == 64 * 256 + 8
    assert qt8.compression_ratio == pytest.approx(64 * 256 * 4 / (64 * 256 + 8))


def test_quantization_error_and_sqnr(rng):
    x = rng.standard_normal((32, 64)).astype(np.float32)
    qt = gq.quantize(x, gq.QuantConfig.int8_per_channel())
    y = qt.dequantize()
    mse = float(np.mean((y.astype(np.float64) - x) ** 2))
    assert qt.quantization_error(x) == pytest.approx(mse, rel=1e-12)
    expected = 10 * np.log10(np.sum(x.astype(np.float64) ** 2) / np.sum((x - y.astype(np.float64)) ** 2))
    assert gq.sqnr(x, y) == pytest.approx(expected, rel=1e-12)
    assert gq.sqnr(x, x.copy()) == float("inf")
    assert gq.sqnr(np.zeros(3), np.ones(3)) == float("-inf")
    with pytest.raises(gq.InvalidShapeError):
        gq.sqnr(x, y[:3])


def test_calibrate_then_quantize_with_qparams(rng):
    x = rng.standard_normal((8, 20)).astype(np.float32)
    cfg = gq.QuantConfig.int4_per_group(8, symmetric=False)
    params = gq.calibrate(x, cfg)
    assert params.scale.shape == (8, 3) and params.zero_point.dtype == np.int32
    a = gq.quantize(x, cfg)
    b = gq.quantize(x, cfg, qparams=params)
    np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(a.scale, params.scale)
