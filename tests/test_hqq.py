"""HQQ (gpuquant.model.hqq): never worse than round-to-nearest of the same config, deterministic,
and the same in NumPy and torch."""

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.model import HQQ
from gpuquant.model.hqq import _solve, hqq_qparams, hqq_quantize

CONFIGS = [gq.QuantConfig.int4_per_group(32, symmetric=False), gq.QuantConfig.int4_per_group(64),
           gq.QuantConfig(scheme="int8", granularity="channel", symmetric=False),
           gq.QuantConfig(scheme="int4", granularity="tensor", symmetric=False),
           gq.QuantConfig.int4_per_group(32, symmetric=False).replace(calibration="mse")]
IDS = [c.describe() for c in CONFIGS]


def layer(seed, rows=48, cols=128):
    """Random weights with heavy tails (a Student t), as trained layers have outliers."""
    rng = np.random.default_rng(seed)
    return (rng.standard_t(4, (rows, cols)) * 0.02).astype(np.float32)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_never_worse_than_round_to_nearest(cfg, seed):
    w = layer(seed)
    rtn, hqq = gq.quantize(w, cfg), hqq_quantize(w, cfg)
    rtn_err, hqq_err = gq.mse(w, rtn.dequantize()), gq.mse(w, hqq.dequantize())
    assert hqq_err <= rtn_err
    # and per unit: each group keeps its best step, starting from round-to-nearest's
    x = np.random.default_rng(seed + 10).standard_normal((16, 128)).astype(np.float32)
    assert hqq.scale.shape == rtn.scale.shape and hqq.zero_point.dtype == np.int32
    assert np.linalg.norm(x @ (w - hqq.dequantize()).T) < 1.05 * np.linalg.norm(x @ (w - rtn.dequantize()).T)


def test_improves_on_min_max_for_asymmetric_int4():
    errs = [(gq.mse(w, gq.quantize(w, CONFIGS[0]).dequantize()),
             gq.mse(w, hqq_quantize(w, CONFIGS[0]).dequantize())) for w in map(layer, range(3))]
    assert all(h < 0.97 * r for r, h in errs), errs


def test_deterministic_and_consistent_with_the_contract():
    w = layer(4)
    a, b = hqq_quantize(w, CONFIGS[0]), hqq_quantize(w.copy(), CONFIGS[0])
    for name in ("data", "scale", "zero_point"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    # the codes are gq.quantize's with HQQ's qparams: an ordinary QuantizedTensor
    again = gq.quantize(w, CONFIGS[0], qparams=(a.scale, a.zero_point))
    assert np.array_equal(again.data, a.data)
    z = a.zero_point
    assert z.min() >= 0 and z.max() <= 15


@pytest.mark.parametrize("cfg", CONFIGS[:3], ids=IDS[:3])
def test_torch_equals_numpy(cfg):
    torch = pytest.importorskip("torch")
    w = layer(5)
    # a CPU tensor is solved in NumPy; _solve runs the torch code as it runs on a GPU
    n, t = hqq_qparams(w, cfg), _solve(torch.from_numpy(w), cfg, HQQ())
    assert np.array_equal(hqq_qparams(torch.from_numpy(w), cfg)[0].numpy(), n[0])
    # float32 sums in another order may move a scale by an ulp: the codes stay
    assert np.allclose(n[0], t[0].numpy(), rtol=1e-5, atol=0)
    assert np.array_equal(n[1], t[1].numpy())
    codes = gq.quantize(w, cfg, qparams=n).data
    assert np.mean(codes != gq.quantize(w, cfg, qparams=(t[0].numpy(), t[1].numpy())).data) < 1e-3


def test_options_and_refusals():
    w = layer(6)
    one = hqq_quantize(w, CONFIGS[0], HQQ(iters=1))
    assert gq.mse(w, one.dequantize()) <= gq.mse(w, gq.quantize(w, CONFIGS[0]).dequantize())
    with pytest.raises(gq.UnsupportedSchemeError, match="whole groups"):
        hqq_quantize(layer(0, cols=100), CONFIGS[0])


@pytest.mark.parametrize("cfg", CONFIGS[:2], ids=IDS[:2])
def test_never_worse_than_the_mse_search_either(cfg):
    for seed in range(3):
        w = layer(seed)
        mse = gq.quantize(w, cfg.replace(calibration="mse"))
        got = hqq_quantize(w, cfg)
        assert gq.mse(w, got.dequantize()) <= gq.mse(w, mse.dequantize())
        alone = hqq_quantize(w, cfg, HQQ(mse_start=False))
        assert gq.mse(w, got.dequantize()) <= gq.mse(w, alone.dequantize())
