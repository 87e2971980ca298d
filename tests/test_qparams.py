"""gpuquant.core.qparams: the one qparams formula (ranges wider than float32 included), the
checks of user-given qparams, and QParams' repr."""

import numpy as np
import pytest
from naive import naive_quantize
from naive import qparams as naive_qparams

import gpuquant as gq
from gpuquant.core import qparams
from gpuquant.core.qparams import FLOAT32_TINY, compute_qparams

F32 = np.float32
MAX = np.finfo(F32).max
RANGES = [(0, 15), (0, 255), (0, 65535)]


def _old_scale(lo, hi, qmin, qmax):
    """The formula before the fix, kept here to show the new one keeps its bits."""
    with np.errstate(all="ignore"):
        lo, hi = np.minimum(lo, F32(0)), np.maximum(hi, F32(0))
        scale = (hi - lo) / F32(qmax - qmin)
        return np.where(np.isfinite(scale) & (scale >= FLOAT32_TINY), scale, F32(1)).astype(F32)


def _edge_values():
    rng = np.random.default_rng(7)
    fixed = [0.0, 2.0 ** -149, 3 * 2.0 ** -149, 2.0 ** -134 + 2.0 ** -149, 2.0 ** -127,
             float(FLOAT32_TINY), 2.0 ** -125, 2.0 ** -110, 1e-30, 0.5, 1.0, 3.0, 1e20,
             float(MAX) / 2, 1.7e38, 3e38, float(MAX)]
    random = np.ldexp(rng.uniform(1, 2, 200), rng.integers(-149, 128, 200))
    return np.unique(np.concatenate([fixed, random]).astype(F32))


@pytest.mark.parametrize("qmin,qmax", RANGES)
def test_same_bits_as_the_old_formula_wherever_it_did_not_overflow(qmin, qmax):
    v = _edge_values()
    lo, hi = np.meshgrid(-v, v)
    with np.errstate(over="ignore"):
        finite = np.isfinite(hi - lo)
    scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=False)
    assert finite.sum() > 10000 and (~finite).sum() > 0
    np.testing.assert_array_equal(scale[finite], _old_scale(lo, hi, qmin, qmax)[finite])
    # the subnormal case where halving both ends would change a normal scale's last bit
    hi1, lo1 = F32(2.0 ** -110), F32(-(2.0 ** -134 + 2.0 ** -149))
    assert (hi1 * F32(0.5) - lo1 * F32(0.5)) / F32(7.5) != (hi1 - lo1) / F32(15)
    assert compute_qparams(lo1, hi1, 0, 15, False)[0] == _old_scale(lo1, hi1, 0, 15)


@pytest.mark.parametrize("qmin,qmax", RANGES)
def test_ranges_wider_than_float32(qmin, qmax):
    v = _edge_values()
    lo, hi = np.meshgrid(-v, v)
    scale, zp = compute_qparams(lo, hi, qmin, qmax, symmetric=False)
    assert np.isfinite(scale).all() and (scale > 0).all()
    with np.errstate(over="ignore"):
        wide = np.isinf(hi - lo)
    # the contract's two float32 roundings, as if float32 had one more exponent bit: the
    # difference rounded to 24 bits (scaled by 1/4 to stay finite), then the quotient (float64
    # division rounded to float32 is correctly rounded: 53 >= 2 * 24 + 2)
    diff = (hi.astype(np.float64) - lo) / 4
    expected = (diff.astype(F32).astype(np.float64) * 4 / (qmax - qmin)).astype(F32)
    np.testing.assert_array_equal(scale[wide], expected[wide])
    bits = {15: 4, 255: 8, 65535: 16}[qmax]
    for i, j in zip(*np.nonzero(wide)):
        assert naive_qparams(lo[i, j], hi[i, j], bits, False) == (scale[i, j], zp[i, j])


def test_issue_example_round_trips():
    x = np.array([-3e38, 3e38, 1, 0], F32)
    qt = gq.quantize(x, gq.QuantConfig.int8_asymmetric())
    assert float(qt.scale) == F32(6e38 / 255)
    y = qt.dequantize()
    # within one step: rint of the zero point shifts the grid by up to half a step, and the
    # ends lie half a step from the nearest code (before the fix: -255, 0, 0, 0)
    assert np.all(np.abs(y - x) <= qt.scale) and y[0] < -2.9e38 and y[1] > 2.9e38
    codes, scale, zp = naive_quantize(x, 8, False)
    np.testing.assert_array_equal(qt.data.astype(np.int64), codes)
    assert scale == qt.scale and zp == qt.zero_point


# ----------------------------------------------------------- user qparams
def test_check_user_qparams_accepts_and_converts():
    s, z = qparams.check_user_qparams(np.array([0.5, 2.0]), np.array([3.0, 200.0]), 0, 255)
    assert s.dtype == np.float32 and z.dtype == np.int32
    assert s.tolist() == [0.5, 2.0] and z.tolist() == [3, 200]
    s, z = qparams.check_user_qparams(np.int64(2), np.uint8(7), 0, 15)
    assert s == 2 and z == 7 and z.dtype == np.int32


@pytest.mark.parametrize("scale,match", [
    (np.array([1.0, 0.0]), "positive"), (np.array([-1.0]), "positive"),
    (np.array([np.nan]), "finite"), (np.array([np.inf]), "finite"),
    (np.array([1e39]), "finite"),            # float64 beyond float32: inf once rounded
    (np.array([1e-40], F32), "normal"),      # subnormal
    (np.array([1e-45]), "normal"),
])
def test_check_user_qparams_refuses_bad_scales(scale, match):
    with pytest.raises(gq.InvalidCalibrationError, match=rf"qparams\.scale.*{match}"):
        qparams.check_user_qparams(scale, np.zeros(scale.shape, np.int32), -128, 127)


@pytest.mark.parametrize("name,scale,zp", [
    ("scale", np.array([1 + 1j]), np.array([0])),
    ("scale", np.array([True]), np.array([0])),
    ("scale", np.array(["1"]), np.array([0])),
    ("zero_point", np.array([1.0]), np.array([1 + 0j])),
    ("zero_point", np.array([1.0]), np.array([None])),
])
def test_check_user_qparams_refuses_bad_dtypes(name, scale, zp):
    with pytest.raises(gq.InvalidDtypeError, match=rf"qparams\.{name} has dtype"):
        qparams.check_user_qparams(scale, zp, 0, 255)


@pytest.mark.parametrize("zp,match", [
    (np.array([1.5]), "integers"), (np.array([np.nan]), "integers"),
    (np.array([256]), r"\[0, 255\]"), (np.array([-1]), r"\[0, 255\]"),
    (np.array([1e30]), r"\[0, 255\]"),
])
def test_check_user_qparams_refuses_bad_zero_points(zp, match):
    with pytest.raises(gq.InvalidCalibrationError, match=rf"qparams\.zero_point.*{match}"):
        qparams.check_user_qparams(np.ones(zp.shape, F32), zp, 0, 255)


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


# ----------------------------------------------------------------- repr
def test_qparams_repr_summarises():
    scale = np.linspace(0.5, 2.0, 10000, dtype=F32).reshape(100, 100)
    zp = np.arange(10000, dtype=np.int32).reshape(100, 100) % 3
    text = repr(gq.QParams(scale, zp))
    assert len(text) < 200, text
    assert "shape=(100, 100)" in text and "float32" in text
    assert "0.5 .. 2" in text and "3 distinct" in text
    torch = pytest.importorskip("torch")
    text = repr(gq.QParams(torch.from_numpy(scale), torch.from_numpy(zp)))
    assert "shape=(100, 100)" in text and "dtype=float32" in text and "3 distinct" in text


def test_qparams_repr_never_raises():
    assert repr(gq.QParams(None, None)).startswith("QParams(shape=()")
    assert repr(gq.QParams(np.array(["a"]), np.array(["b"]))).startswith("QParams(shape=(1,)")
