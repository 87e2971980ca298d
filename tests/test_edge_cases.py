"""Hand-computed cases that pin the numerical contract (docs/ARCHITECTURE.md, 3)."""

import numpy as np
import pytest
from conftest import codes_of

import gpuquant as gq

TINY = np.finfo(np.float32).tiny
FMAX = np.finfo(np.float32).max


def q(x, cfg, scale, zp=0):
    x = np.asarray(x, np.float32)
    return codes_of(gq.quantize(x, cfg, qparams=(np.float32(scale), np.int32(zp)))).tolist()


INT8 = gq.QuantConfig.int8_symmetric()
UINT8 = gq.QuantConfig.int8_asymmetric()


def test_ties_round_half_to_even():
    assert q([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5], INT8, 1.0) == [0, 2, 2, 4, 0, -2, -2]
    # the largest float below 0.5 must not round up (floor(x + 0.5) would give 1)
    assert q([np.nextafter(np.float32(0.5), np.float32(0))], INT8, 1.0) == [0]


def test_clamp_limits():
    x = [127, 127.49, 127.5, 128, -128, -128.5, -129, 1e30, -1e30]
    assert q(x, INT8, 1.0) == [127, 127, 127, 127, -128, -128, -128, 127, -128]
    assert q([-0.6, 254.5, 255.5, 256], UINT8, 1.0) == [0, 254, 255, 255]


def test_nan_is_zero_point_and_infinities_clamp():
    assert q([np.nan, np.inf, -np.inf, 1.0], UINT8, 0.5, zp=10) == [10, 255, 0, 12]
    assert q([np.nan, np.inf, -np.inf], INT8, 0.5) == [0, 127, -128]


def test_zero_range_units_get_scale_one():
    x = np.array([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [-3.0, -3.0, -3.0]], np.float32)
    sym = gq.quantize(x, gq.QuantConfig.int8_per_channel())
    assert sym.scale.tolist() == [1.0, np.float32(5) / np.float32(127), np.float32(3) / np.float32(127)]
    assert codes_of(sym).tolist() == [[0] * 3, [127] * 3, [-127] * 3]
    asym = gq.quantize(x, gq.QuantConfig(granularity="channel", symmetric=False))
    assert asym.scale[0] == 1.0 and asym.zero_point.tolist() == [0, 0, 255]
    assert codes_of(asym).tolist() == [[0] * 3, [255] * 3, [0] * 3]
    np.testing.assert_allclose(asym.dequantize(), x, rtol=1e-6)


def test_asymmetric_range_without_zero_is_not_shifted():
    # the original clamped the zero point and shifted every value of [0.5, 1.5]
    x = np.array([0.5, 1.0, 1.5], np.float32)
    qt = gq.quantize(x, UINT8)
    scale = np.float32(1.5) / np.float32(255)
    assert qt.scale == scale and qt.zero_point == 0
    assert codes_of(qt).tolist() == [85, 170, 255]
    assert np.abs(qt.dequantize() - x).max() <= scale / 2


def test_subnormals():
    # a subnormal range has a subnormal scale: it becomes 1.0 and every code 0
    qt = gq.quantize(np.array([1e-45, -3e-45, 0.0], np.float32), INT8)
    assert qt.scale == 1.0 and codes_of(qt).tolist() == [0, 0, 0]
    # with the smallest normal scale, subnormal inputs keep their codes (no flush to zero)
    assert q([0.75 * TINY, 0.25 * TINY, -0.6 * TINY], INT8, TINY) == [1, 0, -1]
    assert q([1e-40, -1e-40, 1.0], INT8, np.float32(1) / np.float32(127)) == [0, 0, 127]


def test_float32_max():
    x = np.array([FMAX, -FMAX, 0.0], np.float32)
    sym = gq.quantize(x, INT8)
    assert sym.scale == FMAX / np.float32(127) and codes_of(sym).tolist() == [127, -127, 0]
    # hi - lo overflows: the range is halved first (gpuquant.core.qparams.asymmetric_scale), giving
    # scale (2 FMAX) / 255 (issue 13 item 2; it was 1.0 with every code clamped before)
    asym = gq.quantize(x, UINT8)
    assert asym.scale == FMAX / np.float32(127.5) and asym.zero_point == 128
    assert codes_of(asym).tolist() == [255, 0, 128]


def test_symmetric_max_maps_to_qmax():
    x = np.array([-3.0, 1.0, 2.5], np.float32)
    for cfg, qmax in [(INT8, 127), (gq.QuantConfig.int4_symmetric(), 7),
                      (gq.QuantConfig(scheme="int16"), 32767)]:
        codes = codes_of(gq.quantize(x, cfg))
        assert codes[0] == -qmax


@pytest.mark.parametrize("scheme,symmetric,lo,hi", [
    ("int4", True, -8, 7), ("int4", False, 0, 15), ("int8", True, -128, 127),
    ("int8", False, 0, 255), ("int16", True, -32768, 32767), ("int16", False, 0, 65535)])
def test_code_ranges_and_storage_dtypes(scheme, symmetric, lo, hi):
    cfg = gq.QuantConfig(scheme=scheme, symmetric=symmetric)
    assert (cfg.qmin, cfg.qmax) == (lo, hi)
    x = np.linspace(-1e3, 1e3, 101, dtype=np.float32)
    qt = gq.quantize(x, cfg, qparams=(np.float32(1e-3), np.int32(0 if symmetric else 7)))
    codes = codes_of(qt)
    assert codes.min() == lo and codes.max() == hi
    assert str(qt.data.dtype) == {4: "uint8"}.get(cfg.bits, cfg.code_dtype)


def test_bfloat16_output_rounds_to_nearest_even():
    torch = pytest.importorskip("torch")
    x = torch.tensor([1.0, 1.00390625, 3.0], dtype=torch.float32)  # 1 + 2^-8 is a bf16 tie
    qt = gq.quantize(x, gq.QuantConfig(scheme="int16"), qparams=(np.float32(2.0 ** -12), 0))
    y = qt.dequantize(dtype="bfloat16")
    assert y.dtype == torch.bfloat16
    assert torch.equal(y, qt.dequantize(dtype="float32").to(torch.bfloat16))


def test_bfloat16_bits_round_trip_and_round_to_nearest_even():
    from gpuquant.core.frameworks import bf16_bits_to_f32, f32_to_bf16_bits

    torch = pytest.importorskip("torch")
    x = np.array([1.0, 1.00390625, 1.01171875, -3.3e38, np.inf, np.nan, 1e-40, 0.0],
                 np.float32)
    ours = f32_to_bf16_bits(x)
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(np.delete(ours, 5), np.delete(ref, 5))  # NaN payloads differ
    assert np.isnan(bf16_bits_to_f32(ours)[5])
    assert f32_to_bf16_bits(np.float32(2.0)).shape == ()
