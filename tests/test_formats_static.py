"""Static FP8 scales from the Calibrator, given scales in gq.quantize, dynamic FP8
activations, and the refusals of calibrations that do not apply (issue 21)."""

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.config import QuantConfig
from gpuquant.formats import quantize_float

F32 = np.float32


def _batches(n=3, shape=(4, 64)):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(shape) * (i + 1)).astype(F32) for i in range(n)]


@pytest.mark.parametrize("cfg", [QuantConfig.fp8_per_tensor(), QuantConfig.fp8_per_channel(),
                                 QuantConfig.fp8_per_group(32), QuantConfig.fp8_per_tensor("fp8_e5m2")],
                         ids=lambda c: c.describe())
def test_calibrator_gives_the_static_fp8_scale_of_the_calibrated_amax(cfg):
    batches = _batches()
    cal = gq.Calibrator(cfg)
    for b in batches:
        cal.update(b)
    qp = cal.qparams()
    # the scale of all batches at once is the static scale of the calibrated amax
    whole = quantize_float(np.max(np.abs(np.stack(batches)), axis=0), cfg)[1]
    assert qp.scale.dtype == np.float32 and np.array_equal(qp.scale, whole)
    assert not np.any(qp.zero_point)
    x = batches[0]
    qt = gq.quantize(x, cfg, qparams=qp)
    assert np.array_equal(qt.scale, qp.scale)
    fmax = 448.0 if cfg.element == "fp8_e4m3" else 57344.0
    y = qt.dequantize()
    half_ulp = 2.0 ** -4 if cfg.element == "fp8_e4m3" else 2.0 ** -3   # RNE: half a unit
    assert np.all(np.abs(y - x) <= np.abs(x) * half_ulp + qt.scale.max() * 2.0 ** -9)
    assert np.abs(qt.scale).max() * fmax >= np.abs(x).max()
    back = gq.Calibrator.from_state_dict(cal.state_dict())
    assert np.array_equal(back.qparams().scale, qp.scale)


def test_given_scale_saturates_values_past_the_calibrated_range():
    cfg = QuantConfig.fp8_per_tensor()
    qt = gq.quantize(np.array([1.0, 10.0, -100.0], F32), cfg,
                     qparams=gq.QParams(np.array(1 / 64, F32), np.array(0, np.int32)))
    assert qt.data.tolist() == [0x68, 0x7E, 0xFE]        # 64; 640 and -6400 clamped to +-448
    assert qt.dequantize().tolist() == [1.0, 7.0, -7.0]


def test_given_scales_are_checked():
    x = np.ones((4, 64), F32)
    with pytest.raises(gq.UnsupportedSchemeError, match="static scales apply to FP8"):
        gq.quantize(x, QuantConfig.nvfp4(), qparams=(np.ones((4, 4), F32), np.zeros((4, 4), np.int32)))
    with pytest.raises(gq.QuantizationError, match="zero points of 0"):
        gq.quantize(x, QuantConfig.fp8_per_tensor(), qparams=(np.array(1, F32), np.array(3, np.int32)))
    with pytest.raises(gq.InvalidShapeError, match="needs"):
        gq.quantize(x, QuantConfig.fp8_per_channel(), qparams=(np.ones(3, F32), np.zeros(3, np.int32)))
    with pytest.raises(gq.UnsupportedSchemeError, match="out="):
        gq.quantize(x, QuantConfig.fp8_per_tensor(), out=(np.empty((4, 64), np.uint8),))


def test_calibrations_that_do_not_apply_refuse():
    with pytest.raises(gq.UnsupportedSchemeError, match="gq.quantize"):
        gq.calibrate(np.ones((4, 64), F32), QuantConfig.mxfp4())
    with pytest.raises(gq.UnsupportedSchemeError, match="computes its scales"):
        gq.Calibrator(QuantConfig.nf4())
    with pytest.raises(gq.UnsupportedSchemeError, match="computes its scales"):
        gq.Calibrator(QuantConfig.fp8_block())


def test_dynamic_fp8_activations_per_token():
    x = _batches(1, (3, 5, 64))[0]
    qt = gq.DynamicQuantizer("fp8_e4m3", per_token=True)(x)
    codes, scale, _ = quantize_float(x, QuantConfig.fp8_per_token())
    assert qt.scale.shape == (3, 5) and np.array_equal(qt.scale, scale)
    assert np.array_equal(qt.data, codes)


def test_percentile_chooses_the_static_fp8_amax():
    cfg = QuantConfig(scheme="fp8_e4m3", granularity="tensor", calibration=gq.Percentile(0.1, 99.9))
    batches = _batches(3, (64, 64))
    cal = gq.Calibrator(cfg)
    for b in batches:
        cal.update(b)
    lo, hi = cal.range()
    qp = cal.qparams()
    assert qp.scale == F32(max(abs(lo), abs(hi)) / F32(448))
    every = np.concatenate([b.ravel() for b in batches])
    assert abs(lo) < np.abs(every).max() and abs(hi) < np.abs(every).max()   # clipped tails
    qt = gq.quantize(batches[0], cfg, qparams=qp)
    assert np.array_equal(qt.data, gq.quantize(batches[0], QuantConfig.fp8_per_tensor(), qparams=qp).data)
    with pytest.raises(gq.UnsupportedSchemeError, match="gq.Calibrator"):
        gq.quantize(batches[0], cfg)                       # a percentile needs a Calibrator
    with pytest.raises(gq.UnsupportedSchemeError, match="'percentile', through"):
        QuantConfig.nvfp4().replace(calibration="percentile")
