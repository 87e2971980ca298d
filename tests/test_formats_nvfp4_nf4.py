"""NVFP4 against compressed-tensors 0.20's own NVFP4 quantizer and compressor (and ModelOpt
0.47's NVFP4QTensor for its global-scale convention), and NF4
against bitsandbytes' quantize_4bit(quant_type="nf4") on CPU (issue 21). Peers are
imported inside the tests only."""

import numpy as np
import pytest

from gpuquant.config import QuantConfig
from gpuquant.formats import codecs, dequantize_float, quantize_float

F32 = np.float32


def _ct_nvfp4(x):
    """compressed-tensors: generate_gparam, calculate_qparams (e4m3 scales), then
    NVFP4PackedCompressor.compress; and its dequantize in float32."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
    from compressed_tensors.quantization import preset_name_to_scheme
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    scheme = preset_name_to_scheme("NVFP4", ["Linear"])
    w = torch.from_numpy(x.copy())
    n, k = x.shape
    gs = generate_gparam(w.amin().reshape(1), w.amax().reshape(1))
    g = w.reshape(n, k // 16, 16)
    scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), scheme.weights, global_scale=gs)
    out = NVFP4PackedCompressor.compress({"weight": w, "weight_scale": scale,
                                          "weight_global_scale": gs, "weight_zero_point": zp}, scheme)
    packed = out["weight_packed"]
    q = unpack_fp4_from_uint8(packed, n, k, dtype=torch.float32)
    deq = dequantize(q, out["weight_scale"].to(torch.float32), None, scheme.weights,
                     global_scale=out["weight_global_scale"], dtype=torch.float32)
    return (packed.numpy(), out["weight_scale"].view(torch.uint8).numpy(),
            out["weight_global_scale"].numpy(), deq.numpy())


def _nvfp4_data(seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((6, 64)) * np.exp2(rng.integers(-6, 6, (6, 4)).repeat(16, 1)))
    x = x.astype(F32)
    x[0, :16] = 0                                   # zero block: scale 0 -> 0.125 (0x20)
    x[1, :16] = 1e-4                                # its scale rounds to e4m3 0 -> 0.125
    x[2, :16] = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5, 6] * 2) * x[2, 16:].max() / 6
    x[3, :8] = -0.0                                 # exact -0.0: code 0, as compressed-tensors
    x[4, 16:32] = 1e-42                             # subnormal inputs
    return x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nvfp4_equals_compressed_tensors(seed):
    x = _nvfp4_data(seed)
    packed, scale, gs, deq = _ct_nvfp4(x)
    codes, ours, our_gs = quantize_float(x, QuantConfig.nvfp4())
    assert our_gs.dtype == np.float32 and our_gs.shape == () and our_gs == gs[0]
    assert scale.shape == ours.shape == (6, 4) and np.array_equal(ours, scale)
    assert np.array_equal(codes, packed)
    y = dequantize_float(codes, ours, our_gs, QuantConfig.nvfp4(), x.shape)
    assert np.array_equal(y, deq)
    assert ours[0, 0] == 0x20 and ours[1, 0] == 0x20
    assert not (codecs.unpack_low_first(codes[3:4], 8) & 8).any()


@pytest.mark.parametrize("case", ["zeros", "denormal", "nan", "inf"])
def test_nvfp4_edges_against_compressed_tensors(case):
    x = _nvfp4_data(3)[:4]
    if case == "zeros":
        x[:] = 0                                    # amax 0: gs = 1 (448*6/tiny overflows)
    elif case == "denormal":
        x[:] = 1e-42
    else:
        x[1, 20] = np.nan if case == "nan" else np.inf
    packed, scale, gs, _ = _ct_nvfp4(x)
    codes, ours, our_gs = quantize_float(x, QuantConfig.nvfp4())
    # equal scales; a NaN scale's sign bit is the platform's (x86 sets it for a NaN made by
    # arithmetic, CUDA does not), so NaN codes compare without it
    nan = (ours & 0x7F) == 0x7F
    assert our_gs == gs[0] and np.array_equal(nan, (scale & 0x7F) == 0x7F)
    assert np.array_equal(ours[~nan], scale[~nan])
    # codes too, a NaN block's included (compressed-tensors packs int8(NaN) = 0 there)
    assert np.array_equal(codes, packed)
    if case == "zeros":
        assert our_gs == 1 and (ours == 0x20).all() and (codes == 0).all()
    if case == "inf":                               # gs = 448*6/Inf = 0: the tensor is lost
        assert our_gs == 0 and ours[1, 1] & 0x7F == 0x7F
    if case == "nan":                               # gs falls back to 1, the block is NaN
        assert our_gs == 1 and ours[1, 1] & 0x7F == 0x7F
        y = dequantize_float(codes, ours, our_gs, QuantConfig.nvfp4(), x.shape)
        assert np.isnan(y[1, 16:32]).all() and np.isfinite(np.delete(y[1], range(16, 32))).all()


def test_nvfp4_modelopt_convention_equals_modelopt():
    """global_scale_convention="modelopt": ModelOpt 0.47's NVFP4QTensor.quantize and
    dequantize (weight_scale_2 = amax / (6 * 448), block scale amax16 / (6 * ws2), a zero
    block scale 1.0, clamped to [2^-9, 448])."""
    torch = pytest.importorskip("torch")
    NVFP4QTensor = pytest.importorskip(  # its imports need omegaconf, pulp and scipy too
        "modelopt.torch.quantization.qtensor.nvfp4_tensor").NVFP4QTensor

    cfg = QuantConfig.nvfp4("modelopt")
    for seed in (4, 5):
        x = _nvfp4_data(seed)
        x[5, :16] = 1e-9                            # a block scale below 2^-9: clamped up
        packed, scale, ws2 = NVFP4QTensor.quantize(torch.from_numpy(x.copy()), 16)
        codes, ours, our_ws2 = quantize_float(x, cfg)
        assert our_ws2 == ws2.item() == F32(np.abs(x).max() / F32(2688))
        assert np.array_equal(ours, scale.view(torch.uint8).numpy())
        assert np.array_equal(codes, packed._quantized_data.numpy())
        assert ours[0, 0] == 0x38 and ours[5, 0] == 0x01  # zero block: 1.0; the 2^-9 floor
        deq = packed.dequantize(dtype=torch.float32, scale=scale, double_scale=ws2,
                                block_sizes={-1: 16})
        assert np.array_equal(dequantize_float(codes, ours, our_ws2, cfg, x.shape), deq.numpy())
    for bad in (np.nan, np.inf, -np.inf):           # non-finite: ws2 NaN / Inf, as ModelOpt
        z = _nvfp4_data(6)
        z[1, 20] = bad
        packed, scale, ws2 = NVFP4QTensor.quantize(torch.from_numpy(z.copy()), 16)
        codes_z, ours_z, ws2_z = quantize_float(z, cfg)
        assert np.array_equal(codes_z, packed._quantized_data.numpy())
        assert np.array_equal(ours_z & 0x7F, scale.view(torch.uint8).numpy() & 0x7F)  # NaN signs
        assert np.isnan(ws2_z) if np.isnan(bad) else ws2_z == np.inf
    ct = dequantize_float(*quantize_float(x, QuantConfig.nvfp4()), QuantConfig.nvfp4(), x.shape)
    y = dequantize_float(codes, ours, our_ws2, cfg, x.shape)
    err = lambda z: float(np.sum((z.astype(np.float64) - x) ** 2))  # noqa: E731
    assert err(y) <= 1.05 * err(ct)                  # the two conventions are equally good


def test_nvfp4_ragged_rows_and_3d():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 41)).astype(F32)
    codes, scale, gs = quantize_float(x, QuantConfig.nvfp4())
    assert codes.shape == (2, 3, 21) and scale.shape == (2, 3, 3)
    y = dequantize_float(codes, scale, gs, QuantConfig.nvfp4(), x.shape)
    assert y.shape == x.shape and np.abs(y - x).max() <= np.abs(x).max() / 4


# ------------------------------------------------------------------- NF4
def _bnb(x, block):
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F
    from bitsandbytes.backends.default import ops

    packed, state = F.quantize_4bit(torch.from_numpy(x.copy()), blocksize=block, quant_type="nf4")
    code = F.get_4bit_type("nf4", device="cpu")
    # bitsandbytes' dequantization, run eagerly (its torch.compile wrapper takes minutes here)
    deq = ops._dequantize_4bit_compute.__wrapped__(packed.reshape(-1), state.absmax, code, block,
                                                   tuple(x.shape), torch.float32)
    return packed.numpy().reshape(-1), state.absmax.numpy(), deq.numpy()


def _nf4_data(shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-4, 4, shape))).astype(F32)
    flat = x.reshape(-1)
    mids = (codecs.NF4_CODEBOOK[:-1] + codecs.NF4_CODEBOOK[1:]) / F32(2)
    flat[:15] = mids * F32(8)       # ties (the block's absmax is 8): the lower code wins
    flat[15] = 8.0
    flat[16:20] = [0.0, -0.0, 1e-42, -1e-42]
    return x


@pytest.mark.parametrize("shape, block", [((8, 64), 64), ((5, 37), 64), ((3, 33), 32),
                                          ((71,), 128), ((2, 3, 50), 128), ((4, 96), 256)])
def test_nf4_equals_bitsandbytes(shape, block):
    x = _nf4_data(shape, seed=block + len(shape))
    packed, absmax, deq = _bnb(x, block)
    codes, scale, gs = quantize_float(x, QuantConfig.nf4(block))
    assert gs is None and codes.shape == packed.shape and scale.shape == absmax.shape
    assert np.array_equal(codes, packed) and np.array_equal(scale, absmax)
    y = dequantize_float(codes, scale, None, QuantConfig.nf4(block), x.shape)
    assert np.array_equal(y, deq)


def test_nf4_ties_and_edges_against_bitsandbytes():
    x = np.zeros((4, 64), F32)                         # row 0: an all-zero block (absmax 0)
    x[1] = np.linspace(-1, 1, 64) * 1e-40              # subnormal block
    x[2, :2] = [np.nan, 1.0]                            # NaN block
    x[3, :3] = [np.inf, -2.0, 1.0]                      # Inf block
    packed, absmax, _ = _bnb(x.reshape(-1)[:255], 64)   # and a ragged zero tail block
    codes, scale, _ = quantize_float(x.reshape(-1)[:255], QuantConfig.nf4())
    assert np.array_equal(scale, absmax, equal_nan=True)
    assert np.array_equal(codes, packed)
    q = codecs.unpack_high_first(codes, 255)
    assert (q[:64] == 7).all() and q[128] == 15 and q[192] == 15   # 0 -> code 7; NaN -> 15
    tail_x = np.zeros(65, F32)
    tail_codes, tail_scale, _ = quantize_float(tail_x, QuantConfig.nf4())
    assert tail_scale[0] == 0 and tail_scale[1] == F32(1e-38)      # bitsandbytes' tail clamp
    assert tail_codes[-1] == 0x77                                  # pad nibble: the code of 0.0


def test_nf4_codebook_is_bitsandbytes():
    torch = pytest.importorskip("torch")
    pytest.importorskip("bitsandbytes")
    import bitsandbytes.functional as F

    assert np.array_equal(codecs.NF4_CODEBOOK, F.get_4bit_type("nf4", device="cpu").to(torch.float32).numpy())
