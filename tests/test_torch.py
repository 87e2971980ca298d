"""torch CPU tensors in and out, and PyTorch as a peer for symmetric int8 codes."""

import numpy as np
import pytest
from conftest import codes_of

import gpuquant as gq

torch = pytest.importorskip("torch")


@pytest.mark.filterwarnings("ignore:.*quantize_per:UserWarning")
def test_symmetric_per_channel_codes_equal_torch(rng):
    w = torch.from_numpy(rng.standard_normal((64, 300)).astype(np.float32) * 0.05)
    w[:, 5] *= 30
    for axis in (0, 1):
        qt = gq.quantize(w, gq.QuantConfig.int8_per_channel(axis=axis))
        scale = qt.scale
        ref = torch.quantize_per_channel(w, scale.double(), torch.zeros_like(scale, dtype=torch.int64),
                                         axis, torch.qint8)
        assert torch.equal(qt.data, ref.int_repr())
        assert torch.equal(qt.dequantize(), ref.dequantize())


@pytest.mark.filterwarnings("ignore:.*quantize_per:UserWarning")
def test_symmetric_per_tensor_codes_equal_torch(rng):
    x = torch.from_numpy(rng.standard_normal(10_000).astype(np.float32))
    qt = gq.quantize(x, gq.QuantConfig.int8_symmetric())
    ref = torch.quantize_per_tensor(x, float(qt.scale), 0, torch.qint8)
    assert torch.equal(qt.data, ref.int_repr())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_torch_in_torch_out(rng, dtype):
    x = torch.from_numpy(rng.standard_normal((6, 40)).astype(np.float32)).to(dtype)
    cfg = gq.QuantConfig.int4_per_group(16)
    qt = gq.quantize(x, cfg)
    assert isinstance(qt.data, torch.Tensor) and qt.data.dtype == torch.uint8
    assert qt.scale.dtype == torch.float32 and qt.zero_point.dtype == torch.int32
    y = qt.dequantize()
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == x.shape
    # the same values as float32 NumPy give the same codes
    ref = gq.quantize(x.float().numpy(), cfg)
    np.testing.assert_array_equal(codes_of(qt), codes_of(ref))
    np.testing.assert_array_equal(qt.dequantize(dtype="float32").numpy(), ref.dequantize())


def test_non_contiguous_and_grad_tensors(rng):
    base = torch.from_numpy(rng.standard_normal((20, 30)).astype(np.float32)).requires_grad_()
    x = base.t()[::3]
    qt = gq.quantize(x, gq.QuantConfig.int8_per_channel(axis=1))
    ref = gq.quantize(x.detach().numpy().copy(), gq.QuantConfig.int8_per_channel(axis=1))
    np.testing.assert_array_equal(codes_of(qt), codes_of(ref))


def test_zero_copy_input(rng):
    x = torch.from_numpy(rng.standard_normal(8).astype(np.float32))
    from gpuquant.core.frameworks import prepare, to_numpy

    t, info = prepare(x)
    assert np.shares_memory(to_numpy(t, info), x.numpy())


def test_dynamic_per_token_on_torch(rng):
    x = torch.from_numpy(rng.standard_normal((2, 5, 16)).astype(np.float32))
    qt = gq.DynamicQuantizer("int8", per_token=True)(x)
    assert tuple(qt.scale.shape) == (2, 5)
    expected = x.abs().amax(dim=-1) / 127
    assert torch.equal(qt.scale, expected)
