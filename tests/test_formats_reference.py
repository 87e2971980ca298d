"""The float formats' NumPy reference against its peers: FP8 casts (ml_dtypes, torch),
E2M1 (torchao), FP8 quantization (compressed-tensors); shapes and edges (issue 21).
Peers are imported inside the tests only."""

import numpy as np
import pytest

from gpuquant.config import QuantConfig
from gpuquant.formats import codecs, dequantize_float, quantize_float, unit_shape

F32 = np.float32


def _fp8_probe(fmt):
    """Every code value, the midpoints between neighbours (ties), values just around them,
    subnormals, values at and past the max, random values over many binades, +/-Inf."""
    grid = codecs._grid(fmt)
    mids = (grid[:-1] + grid[1:]) / 2
    near = np.concatenate([np.nextafter(mids.astype(F32), F32(np.inf)),
                           np.nextafter(mids.astype(F32), F32(0))])
    rng = np.random.default_rng(0)
    rand = rng.standard_normal(4000) * np.exp2(rng.uniform(-30, 20, 4000))
    past = [fmt.max, fmt.max * 1.03, fmt.max * 1.0625, fmt.max * 1.07, fmt.max * 4, 3e38, np.inf]
    pos = np.concatenate([grid, mids, near, np.abs(rand), past, [1e-45, 1e-30]]).astype(F32)
    return np.concatenate([pos, -pos])


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_encode_equals_ml_dtypes_cast(name):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    fmt = codecs.MINIFLOATS[name]
    x = _fp8_probe(fmt)
    peer = x.astype(getattr(ml_dtypes, "float8_e4m3fn" if name == "fp8_e4m3" else "float8_e5m2"))
    # ml_dtypes does not saturate: past the max is NaN (e4m3fn) or Inf (e5m2)
    assert np.array_equal(codecs.encode(x, fmt, saturate=False), peer.view(np.uint8))
    assert np.array_equal(codecs.decode(np.arange(256), fmt), np.arange(256, dtype=np.uint8)
                          .view(peer.dtype).astype(F32), equal_nan=True)


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_encode_equals_torch_cast(name):
    torch = pytest.importorskip("torch")
    fmt = codecs.MINIFLOATS[name]
    x = np.concatenate([_fp8_probe(fmt), [np.nan, -np.nan]]).astype(F32)
    dtype = torch.float8_e4m3fn if name == "fp8_e4m3" else torch.float8_e5m2
    peer = torch.from_numpy(x).to(dtype).view(torch.uint8).numpy()
    # torch 2.13 saturates e4m3fn (Inf too) but not e5m2; NaN -> S.1111.111 / S.11111.11
    ours = codecs.encode(x, fmt, saturate=name == "fp8_e4m3")
    assert np.array_equal(ours, peer)
    assert ours[-2] == 0x7F and ours[-1] == 0xFF


def test_e2m1_encode_equals_torchao_rounding():
    pytest.importorskip("torchao")
    torch = pytest.importorskip("torch")
    from torchao.prototype.custom_fp_utils import _f32_to_floatx_unpacked

    grid = codecs._grid(codecs.E2M1)
    mids = (grid[:-1] + grid[1:]) / 2           # 0.25, 0.75, ... 5: ties to even
    rng = np.random.default_rng(1)
    pos = np.concatenate([grid, mids, np.nextafter(mids.astype(F32), F32(9)),
                          np.nextafter(mids.astype(F32), F32(0)), rng.uniform(0, 8, 500),
                          [6.5, 7.0, 1e30, np.inf, 1e-40, np.nan]]).astype(F32)
    x = np.concatenate([pos, -pos])
    peer = _f32_to_floatx_unpacked(torch.from_numpy(x), 2, 1).numpy()
    assert np.array_equal(codecs.encode(x, codecs.E2M1), peer)
    assert list(codecs.encode(mids.astype(F32), codecs.E2M1)) == [0, 2, 2, 4, 4, 6, 6]
    assert codecs.encode(np.array([np.nan, -np.nan], F32), codecs.E2M1).tolist() == [3, 11]  # torchao


def test_nibble_orders_and_e8m0_decoding():
    codes = np.arange(1, 8, dtype=np.uint8).reshape(1, 7)
    packed = codecs.pack_low_first(codes)
    assert packed.tolist() == [[0x21, 0x43, 0x65, 0x07]]      # even element low, zero pad
    assert np.array_equal(codecs.unpack_low_first(packed, 7), codes)
    hi = codecs.pack_high_first(np.array([1, 2, 3], np.uint8), pad=7)
    assert hi.tolist() == [0x12, 0x37]                          # first element high
    assert codecs.unpack_high_first(hi, 3).tolist() == [1, 2, 3]
    e = codecs.decode_e8m0(np.array([0, 1, 127, 254, 255], np.uint8))
    assert e[0] == F32(2.0 ** -127) and e[2] == 1 and e[3] == F32(2.0 ** 127) and np.isnan(e[4])


def _ct_fp8(x, strategy, unit_min, unit_max, **kwargs):
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize, quantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams

    args = QuantizationArgs(num_bits=8, type="float", strategy=strategy, symmetric=True, **kwargs)
    scale, zp = calculate_qparams(unit_min, unit_max, args)
    q = quantize(torch.from_numpy(x), scale, zp, args)
    return (q.to(torch.float8_e4m3fn).view(torch.uint8).numpy(), scale.numpy(),
            dequantize(q, scale, zp, args).numpy())


def _fp8_data(rows=6, cols=80, seed=2):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * np.exp2(rng.integers(-8, 8, (rows, cols)))).astype(F32)
    x[0] = 0                                        # a zero row: scale = float32 eps
    x[1, :16] = 1e-42                               # a subnormal group
    x[2, 3] = 448 * 3                               # a large value: the cast's top
    return x


@pytest.mark.parametrize("strategy, cfg, kwargs", [
    ("tensor", QuantConfig.fp8_per_tensor(), {}),
    ("channel", QuantConfig.fp8_per_channel(), {}),
    ("token", QuantConfig.fp8_per_token(), dict(dynamic=True)),
    ("group", QuantConfig.fp8_per_group(16), dict(group_size=16)),
    ("block", QuantConfig.fp8_block((3, 16)), dict(block_structure=[3, 16])),
], ids=lambda v: v if isinstance(v, str) else "")
def test_fp8_quantize_equals_compressed_tensors(strategy, cfg, kwargs):
    torch = pytest.importorskip("torch")
    x = _fp8_data()
    w = torch.from_numpy(x)
    if strategy == "tensor":
        lo, hi = w.amin(), w.amax()
    elif strategy in ("channel", "token"):
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    elif strategy == "group":
        lo, hi = w.reshape(6, -1, 16).amin(-1), w.reshape(6, -1, 16).amax(-1)
    else:
        b = w.reshape(2, 3, 5, 16)
        lo, hi = b.amin((1, 3)), b.amax((1, 3))
    codes, scale, deq = _ct_fp8(x, strategy, lo, hi, **kwargs)
    ours, our_scale, _ = quantize_float(x, cfg)
    assert np.array_equal(ours, codes)
    assert np.array_equal(our_scale, scale.reshape(our_scale.shape))
    assert np.array_equal(dequantize_float(ours, our_scale, None, cfg, x.shape), deq)
    if strategy in ("channel", "token"):
        assert our_scale[0] == np.finfo(F32).eps     # zero amax -> eps, as compressed-tensors


def test_fp8_ragged_block_and_group_use_the_real_elements():
    x = _fp8_data(5, 37)
    codes, scale, _ = quantize_float(x, QuantConfig.fp8_block((2, 16)))
    assert scale.shape == (3, 3) == unit_shape(x.shape, QuantConfig.fp8_block((2, 16)))
    assert scale[2, 2] == F32(np.abs(x[4:, 32:]).max() / F32(448))
    _, gscale, _ = quantize_float(x, QuantConfig.fp8_per_group(16))
    assert gscale.shape == (5, 3) and gscale[3, 2] == F32(np.abs(x[3, 32:]).max() / F32(448))
    cfg = QuantConfig.fp8_per_channel(axis=1)
    codes, scale, _ = quantize_float(x, cfg)
    assert scale.shape == (37,) and scale[5] == F32(np.abs(x[:, 5]).max() / F32(448))
    y = dequantize_float(codes, scale, None, cfg, x.shape)
    assert np.abs(y - x).max() <= np.abs(x).max() / 16


def test_fp8_e5m2_and_nonfinite_inputs():
    x = np.array([[1.0, -3.0, np.nan, 2.0], [1.0, np.inf, 0.5, 0.0]], F32)
    codes, scale, _ = quantize_float(x, QuantConfig.fp8_per_token("fp8_e5m2"))
    assert np.isnan(scale[0]) and codes[0, 2] == 0x7F     # a NaN amax: NaN scale, NaN codes
    # an Inf amax: scale Inf, x / Inf = 0, Inf / Inf = NaN (the sign of a NaN made by
    # arithmetic is the platform's: x86 sets it, CUDA does not)
    assert np.isinf(scale[1]) and codes[1, 1] & 0x7F == 0x7F and codes[1, 0] == 0
    e4, s4, _ = quantize_float(np.array([0.0, 0.0], F32), QuantConfig.fp8_per_tensor())
    assert s4 == np.finfo(F32).eps and e4.tolist() == [0, 0]
