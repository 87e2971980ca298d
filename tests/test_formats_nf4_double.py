"""NF4 with double quantization (QuantConfig.nf4(double_quant=True)) against bitsandbytes'
quantize_4bit(quant_type="nf4", compress_statistics=True) on CPU tensors, the Triton kernels
under the interpreter against the NumPy reference, save/load and the CLI (issue 21).

bitsandbytes' offset is torch's float32 ``absmax.mean()``, whose summation order depends on
the device and the CPU's vector width; gpuquant's is a float64 sum in a fixed order
(reference.nested_mean). The two agree exactly where every float32 partial sum is exact (data
on a coarse grid, ``_grid_data``); on other data the offsets may differ by float32 rounding,
so there the codes are compared given bitsandbytes' own offset (reference.nest_absmax).
"""

import json

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.cli import main
from gpuquant.formats import codecs, dequantize_float, quantize_float
from gpuquant.formats.reference import nest_absmax, nested_mean, unnest_absmax

torch = pytest.importorskip("torch")
F = pytest.importorskip("bitsandbytes.functional")

F32 = np.float32
DQ = gq.QuantConfig.nf4(double_quant=True)
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _bnb(x_t, block):
    """bitsandbytes' packed codes, absmax codes, state2.absmax, offset and dequantized values."""
    packed, state = F.quantize_4bit(x_t, blocksize=block, quant_type="nf4", compress_statistics=True)
    assert state.nested and state.state2.blocksize == 256
    y = F.dequantize_4bit(packed, state).reshape(x_t.shape)   # its C++ kernel: even last dims
    return (packed.numpy().reshape(-1), state.absmax.numpy(), state.state2.absmax.numpy(),
            state.offset.numpy(), y)


def _bits(t):
    return t.view(torch.int16).numpy() if t.dtype != torch.float32 else t.numpy()


def _grid_data(shape, seed):
    """Values k / 64, |k| <= 255: exact in bfloat16 and float16, and every absmax a multiple of
    2^-6 below 4, so any float32 summation of a few thousand of them is exact."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-255, 256, shape) / 64).astype(F32)


# (shape, block): NF4 block counts 76, 469, 257, 1, 3 (none a multiple of 256)
SHAPES = [((38, 128), 64), ((300, 100), 64), ((257, 128), 128), ((2, 16), 64), ((3, 64), 32)]


def test_dynamic_map_is_bitsandbytes():
    assert np.array_equal(codecs.DYNAMIC_MAP, F.create_dynamic_map(signed=True).numpy())
    assert codecs.DYNAMIC_MAP.dtype == F32 and codecs.DYNAMIC_MAP.shape == (256,)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape, block", SHAPES)
def test_exact_sums_equal_bitsandbytes_everywhere(shape, block, dtype):
    x_t = torch.from_numpy(_grid_data(shape, block + shape[0])).to(TORCH_DTYPES[dtype])
    packed, qabs, nested, offset, y_bnb = _bnb(x_t, block)
    cfg = gq.QuantConfig.nf4(block, double_quant=True)
    qt = gq.quantize(x_t, cfg)
    assert qt.scale.dtype == torch.uint8 and qt.nested_offset.shape == ()
    assert np.array_equal(qt.data.numpy(), packed) and np.array_equal(qt.scale.numpy(), qabs)
    assert np.array_equal(qt.nested_absmax.numpy(), nested)
    assert qt.nested_offset.numpy().tobytes() == offset.tobytes()
    y = qt.dequantize()
    assert y.dtype == x_t.dtype and np.array_equal(_bits(y), _bits(y_bnb))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("shape, block", SHAPES)
def test_random_data_given_bitsandbytes_offset(shape, block, dtype):
    rng = np.random.default_rng(block * 7 + shape[0])
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-6, 6, shape))).astype(F32)
    x_t = torch.from_numpy(x).to(TORCH_DTYPES[dtype])
    packed, qabs, nested, offset, y_bnb = _bnb(x_t, block)
    cfg = gq.QuantConfig.nf4(block, double_quant=True)
    codes, absmax, _ = quantize_float(x_t.float().numpy(), gq.QuantConfig.nf4(block))
    assert np.array_equal(codes, packed)
    q, ours_nested, ours_offset = nest_absmax(absmax, offset)
    assert np.array_equal(q, qabs) and np.array_equal(ours_nested, nested)
    # the offsets: a float32 mean by two summation orders (module docstring); the bound is
    # torch's float32 accumulation error over at most a few thousand terms
    assert nested_mean(absmax) == pytest.approx(float(offset), rel=1e-5)
    y = dequantize_float(codes, q, (ours_nested, ours_offset), cfg, shape)
    assert np.array_equal(_bits(torch.from_numpy(y).to(x_t.dtype)), _bits(y_bnb))


def _blockwise(a):
    """bitsandbytes' quantize_blockwise of a float32 array in blocks of 256 (its nested step)."""
    out, state = F.quantize_blockwise(torch.from_numpy(a), blocksize=256)
    return out.numpy(), state.absmax.numpy()


def test_encoder_bins_ties_and_specials_equal_bitsandbytes():
    bins = np.arange(65536, dtype=F32)
    edges = (F32(-1) + (F32(2) * bins - F32(1)) / F32(65535)).astype(F32)  # bin boundaries
    mids = (F32(0.5) * (codecs.DYNAMIC_MAP[:-1] + codecs.DYNAMIC_MAP[1:])).astype(F32)
    near = np.concatenate([edges, mids, np.linspace(-1, 1, 400001, dtype=F32)])
    near = np.concatenate([near, np.nextafter(near, F32(2)), np.nextafter(near, F32(-2))])
    near = near[np.abs(near) <= 1]
    pad = (-near.size) % 255
    rows = np.concatenate([near, np.zeros(pad, F32)]).reshape(-1, 255)
    a = np.concatenate([np.ones((rows.shape[0], 1), F32), rows], axis=1).reshape(-1)  # m = 1
    codes, m = _blockwise(a)
    ours, ours_m, _ = nest_absmax(a, F32(0))
    assert np.array_equal(ours, codes) and np.array_equal(ours_m, m)
    # a midpoint of the map exactly: the 65536-bin table decides, not the nearest entry
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 3.0, -1e-45] + [0.0] * 249
                        + [0.0] * 256 + [np.nan] * 3 + [2.5, -2.5, 1e-40], F32)
    codes, m = _blockwise(specials)
    ours, ours_m, _ = nest_absmax(specials, F32(0))
    assert np.array_equal(ours, codes) and np.array_equal(ours_m, m)
    assert (ours[256:512] == 0).all() and ours_m[1] == 0          # an all-zero block: codes 0


def test_zero_and_constant_absmax_equal_bitsandbytes():
    x = np.zeros((4, 64), F32)
    x[2:] = np.tile(np.linspace(-1, 1, 64, dtype=F32), (2, 1))   # two blocks of absmax 1
    for data in (np.zeros((3, 64), F32), x):
        packed, qabs, nested, offset, y_bnb = _bnb(torch.from_numpy(data), 64)
        qt = gq.quantize(data, DQ)
        assert np.array_equal(qt.data, packed) and np.array_equal(qt.scale, qabs)
        assert np.array_equal(qt.nested_absmax, nested) and qt.nested_offset == offset
        assert np.array_equal(qt.dequantize(), y_bnb.numpy())


def test_reference_reconstructs_its_absmax():
    absmax = np.abs(np.random.default_rng(3).standard_normal(700)).astype(F32)
    q, nested, offset = nest_absmax(absmax)
    back = unnest_absmax(q, nested, offset)
    step = np.repeat(nested, 256)[:700]
    assert nested.shape == (3,) and offset == nested_mean(absmax)
    assert np.all(np.abs(back - absmax) <= step * F32(0.02) + F32(1e-6))   # 8-bit dynamic codes


# ---------------------------------------------------------------- Triton (interpreter)
@pytest.fixture
def tf():
    from conftest import CUDA, INTERPRET

    pytest.importorskip("triton")
    if not (CUDA or INTERPRET):
        pytest.fail("the Triton tests need a CUDA device or TRITON_INTERPRET=1 (conftest.py)")
    from gpuquant.backends.triton import floats

    return floats, "cuda" if CUDA and not INTERPRET else "cpu"


@pytest.mark.parametrize("shape, block, special", [((7, 130), 64, False), ((3, 5000), 32, True),
                                                   ((33,), 128, False), ((1, 1), 64, True)])
def test_triton_bit_exact_with_reference(tf, shape, block, special):
    floats, device = tf
    rng = np.random.default_rng(block)
    x = (rng.standard_normal(shape) * np.exp2(rng.integers(-8, 8, shape))).astype(F32)
    if special:
        x.reshape(-1)[-1] = np.inf if x.size > 1 else np.nan
    cfg = gq.QuantConfig.nf4(block, double_quant=True)
    codes, q, (nested, offset) = floats.quantize_float(torch.from_numpy(x).to(device), cfg)
    r_codes, r_q, (r_nested, r_offset) = quantize_float(x, cfg)
    assert np.array_equal(codes.cpu().numpy(), r_codes) and np.array_equal(q.cpu().numpy(), r_q)
    assert np.array_equal(nested.cpu().numpy(), r_nested, equal_nan=True)
    assert np.array_equal(offset.cpu().numpy(), r_offset, equal_nan=True)
    for dtype in (torch.float32, torch.bfloat16):
        y = floats.dequantize_float(codes, q, (nested, offset), cfg, shape, dtype=dtype)
        ref = torch.from_numpy(dequantize_float(r_codes, r_q, (r_nested, r_offset), cfg, shape))
        assert torch.equal(y.cpu().float().isnan(), ref.to(dtype).float().isnan())
        assert np.array_equal(_bits(torch.nan_to_num(y.cpu())), _bits(torch.nan_to_num(ref.to(dtype))))


def test_triton_offset_is_one_fixed_order_sum(tf):
    floats, device = tf
    from gpuquant.backends.triton.nested import nest

    # values in [0, 1) and 60 pairs +-2^60 (nest takes any float32): what the float64 sum keeps
    # of the small values depends on its order, and so does the float32 mean; the kernel's
    # order must be the reference's
    rng = np.random.default_rng(9)
    a = rng.random(40000).astype(F32)
    a[rng.permutation(40000)[:120]] = np.repeat(F32([2.0**60, -(2.0**60)]), 60)
    other_orders = {np.float32(np.sum(a.astype(np.float64)) / a.size),
                    np.float32(np.add.accumulate(a.astype(np.float64))[-1] / a.size)}
    assert nested_mean(a) not in other_orders
    _, _, offset = nest(torch.from_numpy(a).to(device))
    assert offset.cpu().numpy().tobytes() == nested_mean(a).tobytes()


# ------------------------------------------------------------------- API, files, CLI
def test_config_round_trip_and_validation():
    assert DQ.double_quant and not gq.QuantConfig.nf4().double_quant
    assert "double_quant" not in gq.QuantConfig.nf4().to_dict()     # other files unchanged
    assert gq.QuantConfig.from_dict(DQ.to_dict()) == DQ and DQ.to_dict()["double_quant"] is True
    assert DQ.describe() == "nf4/group64/float32/double_quant" and "double_quant=True" in repr(DQ)
    with pytest.raises(gq.UnsupportedSchemeError, match="double_quant=True applies to element 'nf4'"):
        gq.QuantConfig.fp8_per_tensor().replace(double_quant=True)
    with pytest.raises(gq.UnsupportedSchemeError, match="double_quant='yes' must be True or False"):
        gq.QuantConfig.nf4(double_quant="yes")


def test_parts_are_checked():
    x = np.random.default_rng(1).standard_normal((9, 64)).astype(F32)
    qt = gq.quantize(x, DQ)
    good = dict(nested_absmax=qt.nested_absmax, nested_offset=qt.nested_offset)
    back = gq.QuantizedTensor(qt.data, qt.scale, None, x.shape, "float32", DQ, **good)
    assert np.array_equal(back.dequantize(), qt.dequantize())
    assert qt.size_bytes == 288 + 9 + 4 + 4
    with pytest.raises(gq.InvalidDtypeError, match="nested_absmax must be an array"):
        gq.QuantizedTensor(qt.data, qt.scale, None, x.shape, "float32", DQ, nested_offset=qt.nested_offset)
    with pytest.raises(gq.InvalidDtypeError, match="scale has dtype float32"):
        gq.QuantizedTensor(qt.data, qt.scale.astype(F32), None, x.shape, "float32", DQ, **good)
    with pytest.raises(gq.InvalidShapeError, match="nested_absmax has shape"):
        gq.QuantizedTensor(qt.data, qt.scale, None, x.shape, "float32", DQ,
                           nested_absmax=np.zeros(2, F32), nested_offset=qt.nested_offset)
    with pytest.raises(gq.QuantizationError, match="nested_absmax is given but"):
        gq.QuantizedTensor(qt.data, np.ones(9, F32), None, x.shape, "float32", gq.QuantConfig.nf4(),
                           **good)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_save_load_round_trip(tmp_path, framework):
    x = np.random.default_rng(2).standard_normal((40, 70)).astype(F32)
    qt = gq.quantize(x if framework == "numpy" else torch.from_numpy(x), DQ)
    path = tmp_path / "dq.safetensors"
    gq.save(path, {"w": qt})
    back = gq.load(path, framework=framework)["w"]
    assert back.config == DQ and back.framework == framework
    for name in ("data", "scale", "nested_absmax", "nested_offset"):
        assert np.array_equal(np.asarray(getattr(back, name)), np.asarray(getattr(qt, name)))
    assert np.array_equal(np.asarray(back.dequantize()), np.asarray(qt.dequantize()))


@pytest.fixture
def model(tmp_path):
    from gpuquant.checkpoint.files import write_safetensors

    path = tmp_path / "model.safetensors"
    w = np.random.default_rng(0).standard_normal((64, 96)).astype(F32)
    write_safetensors(str(path), [("layer.weight", "F32", w)], {"format": "pt"})
    return path, w


def test_cli_quantize_inspect_dequantize(tmp_path, model, capsys):
    path, w = model
    out = tmp_path / "q.safetensors"
    assert main(["quantize", str(path), "-o", str(out), "--quiet", "--scheme", "nf4",
                 "--double-quant", "--group-size", "128"]) == 0
    qt = gq.load(out)["layer.weight"]
    cfg = gq.QuantConfig.nf4(128, double_quant=True)
    codes, q, (nested, offset) = quantize_float(w, cfg)
    assert qt.config == cfg and np.array_equal(qt.data, codes) and np.array_equal(qt.scale, q)
    assert np.array_equal(qt.nested_absmax, nested) and qt.nested_offset == offset
    capsys.readouterr()
    assert main(["inspect", str(out), "--reference", str(path), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["tensors"][0]
    assert row["bytes"] == qt.size_bytes and row["granularity"] == "group128/float32/double_quant"
    assert row["sqnr_db"] == pytest.approx(float(gq.sqnr(w, qt.dequantize())), rel=1e-6)
    back = tmp_path / "back.safetensors"
    assert main(["dequantize", str(out), "-o", str(back), "--quiet"]) == 0
    assert np.array_equal(gq.load(back)["layer.weight"], qt.dequantize())


@pytest.mark.parametrize("scheme", ["int8", "int4", "nvfp4", "fp8"])
def test_cli_double_quant_needs_nf4(tmp_path, model, capsys, scheme):
    path, _ = model
    out = tmp_path / "q.safetensors"
    code = main(["quantize", str(path), "-o", str(out), "--scheme", scheme, "--double-quant"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "gpuquant: error: --double-quant applies to --scheme nf4"
    assert not out.exists()
