"""gq.sqnr (gpuquant/metrics.py) and QuantizedTensor.quantization_error against their formulas."""

import numpy as np
import pytest

import gpuquant as gq


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
