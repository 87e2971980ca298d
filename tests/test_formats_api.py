"""The float formats through the public API: gq.quantize, QuantizedTensor, dequantize,
sizes, gq.save / gq.load, and the backend dispatch (issue 21)."""

import sys
import types

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.config import QuantConfig
from gpuquant.formats import dequantize_float, quantize_float

F32 = np.float32
CONFIGS = [QuantConfig.fp8_per_tensor(), QuantConfig.fp8_per_channel(), QuantConfig.fp8_per_token(),
           QuantConfig.fp8_per_group(32), QuantConfig.fp8_block((4, 32)),
           QuantConfig.fp8_per_tensor("fp8_e5m2"), QuantConfig.mxfp8(), QuantConfig.mxfp4("rceil"),
           QuantConfig.nvfp4(), QuantConfig.nvfp4("modelopt"), QuantConfig.nf4()]


def _x(shape=(8, 96), seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.describe())
def test_quantize_numpy_equals_the_reference(cfg):
    x = _x()
    qt = gq.quantize(x, cfg)
    codes, scale, gs = quantize_float(x, cfg)
    assert isinstance(qt, gq.QuantizedTensor) and qt.config == cfg and qt.zero_point is None
    assert np.array_equal(qt.data, codes) and np.array_equal(qt.scale, scale)
    assert (qt.global_scale is None) == (gs is None)
    y = qt.dequantize(dtype="float32")
    assert y.dtype == np.float32 and np.array_equal(y, dequantize_float(codes, scale, gs, cfg, x.shape))
    assert gq.sqnr(x, y) > (15 if cfg.bits == 4 else 25)
    assert qt.dequantize(dtype="float16").dtype == np.float16
    nbytes = codes.nbytes + scale.nbytes + (0 if gs is None else 4)
    assert qt.size_bytes == nbytes and qt.compression_ratio == pytest.approx(x.nbytes / nbytes)
    assert cfg.describe() in repr(qt)


def test_sizes_of_the_formats():
    x = _x((16, 256))
    size = {c.describe(): gq.quantize(x, c).size_bytes for c in CONFIGS}
    assert size["fp8_e4m3/tensor/float32"] == 16 * 256 + 4
    assert size["fp8_e4m3/block4x32/float32"] == 16 * 256 + 4 * 4 * 8
    assert size["fp8_e4m3/group32/e8m0/floor"] == 16 * 256 + 16 * 8       # MXFP8: 8.25 bits
    assert size["fp4_e2m1/group32/e8m0/rceil"] == 16 * 128 + 16 * 8       # MXFP4: 4.25 bits
    assert size["fp4_e2m1/group16/e4m3/compressed_tensors"] == 16 * 128 + 16 * 16 + 4  # 4.5
    assert size["nf4/group64/float32"] == 16 * 128 + 64 * 4               # NF4: 4.5 bits


def test_torch_inputs_keep_their_framework_and_dtype():
    torch = pytest.importorskip("torch")
    x = _x((4, 64))
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        t = torch.from_numpy(x).to(dtype)
        qt = gq.quantize(t, QuantConfig.nvfp4())
        assert isinstance(qt.data, torch.Tensor) and qt.data.dtype == torch.uint8
        assert qt.global_scale.shape == () and qt.dtype == str(dtype).replace("torch.", "")
        want = quantize_float(t.to(torch.float32).numpy(), QuantConfig.nvfp4())
        assert np.array_equal(qt.data.numpy(), want[0]) and np.array_equal(qt.scale.numpy(), want[1])
        y = qt.dequantize()
        assert y.dtype == dtype and y.shape == t.shape
    y = gq.quantize(torch.from_numpy(x), QuantConfig.mxfp4()).dequantize(dtype="bfloat16")
    assert y.dtype == torch.bfloat16


def test_float64_is_rounded_once_to_float32():
    x = np.array([[1 + 2.0 ** -30, 3.0, -7.5, 0.1]], np.float64)
    a = gq.quantize(x, QuantConfig.fp8_per_token())
    b = gq.quantize(x.astype(F32), QuantConfig.fp8_per_token())
    assert np.array_equal(a.data, b.data) and np.array_equal(a.scale, b.scale)
    assert a.dequantize().dtype == np.float64


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.describe())
def test_save_load_round_trip(tmp_path, cfg):
    x = _x((6, 70))
    qt = gq.quantize(x, cfg)
    path = tmp_path / "w.safetensors"
    gq.save(path, {"w": qt, "old": gq.quantize(x, QuantConfig.int4_per_group(32)), "plain": x})
    back = gq.load(path)
    w = back["w"]
    assert w.config == cfg and w.shape == x.shape and w.zero_point is None
    assert np.array_equal(w.data, qt.data) and np.array_equal(w.scale, qt.scale)
    assert np.array_equal(w.dequantize(), qt.dequantize())
    assert np.array_equal(back["old"].dequantize(), gq.quantize(x, QuantConfig.int4_per_group(32))
                          .dequantize())
    assert set(back) == {"w", "old", "plain"}
    from gpuquant.checkpoint.files import SafetensorsFile

    with SafetensorsFile(str(path)) as f:
        names = {k for k in f.keys() if k.startswith("w.")}
    assert names == ({"w.qdata", "w.scale", "w.global_scale"} if cfg.scale_format == "e4m3"
                     else {"w.qdata", "w.scale"})
    pytest.importorskip("torch")
    t = gq.load(path, framework="torch")["w"]
    assert t.framework == "torch" and np.array_equal(t.dequantize().numpy(), qt.dequantize())


def test_load_rejects_a_tampered_float_file(tmp_path):
    x = _x((4, 64))
    path = tmp_path / "w.safetensors"
    qt = gq.quantize(x, QuantConfig.nvfp4())
    import json

    from gpuquant.checkpoint.files import write_safetensors
    meta = {"gpuquant.format_version": "1", "gpuquant.tensors": json.dumps(
        {"w": {"config": QuantConfig.nvfp4().to_dict(), "shape": [4, 64], "dtype": "float32"}})}
    write_safetensors(str(path), [("w.qdata", "U8", np.asarray(qt.data)),
                                  ("w.scale", "U8", np.asarray(qt.scale))], meta)
    with pytest.raises(gq.FormatError, match="lacks 'w.global_scale'"):
        gq.load(path)


def test_constructor_checks_the_parts():
    x = _x((4, 64))
    codes, scale, gs = quantize_float(x, QuantConfig.nvfp4())
    qt = gq.QuantizedTensor(codes, scale, None, (4, 64), "float32", QuantConfig.nvfp4(),
                            global_scale=gs)
    assert np.array_equal(qt.dequantize(), dequantize_float(codes, scale, gs, QuantConfig.nvfp4(),
                                                            (4, 64)))
    cases = [
        (dict(global_scale=None), gq.InvalidDtypeError, "global_scale must be an array"),
        (dict(scale=scale.astype(F32)), gq.InvalidDtypeError, "scale has dtype float32"),
        (dict(data=codes[:, :-1]), gq.InvalidShapeError, "data has shape"),
        (dict(zero_point=np.zeros(4, np.int32)), gq.QuantizationError, "zero_point must be None"),
    ]
    for change, error, words in cases:
        kwargs = dict(data=codes, scale=scale, zero_point=None, shape=(4, 64), dtype="float32",
                      config=QuantConfig.nvfp4(), global_scale=gs) | change
        with pytest.raises(error, match=words):
            gq.QuantizedTensor(**kwargs)
    with pytest.raises(gq.QuantizationError, match="has none"):
        gq.QuantizedTensor(codes, scale, None, (4, 64), "float32", QuantConfig.mxfp4(),
                           global_scale=gs)


def test_unsupported_arguments_and_shapes_name_themselves():
    x = _x((4, 64))
    with pytest.raises(gq.UnsupportedSchemeError, match="static scales apply to FP8"):
        gq.quantize(x, QuantConfig.mxfp8(), qparams=(np.float32(1), np.int32(0)))
    with pytest.raises(gq.InvalidShapeError, match="needs a 2-D tensor"):
        gq.quantize(x.reshape(2, 2, 64), QuantConfig.fp8_block())
    with pytest.raises(gq.EmptyTensorError):
        gq.quantize(np.zeros((0, 4), F32), QuantConfig.nf4())
    with pytest.raises(gq.InvalidDtypeError):
        gq.quantize(np.ones((2, 2), np.int32), QuantConfig.mxfp4())
    with pytest.raises(gq.BackendUnavailableError, match="backend='triton'"):
        gq.quantize(x, QuantConfig.mxfp4(), backend="triton")


def test_gpu_inputs_dispatch_to_triton_float(monkeypatch):
    """backend='triton' (here a torch CPU tensor under TRITON_INTERPRET=1) calls
    gpuquant.backends.triton.floats's two functions; a stand-in module records the calls."""
    torch = pytest.importorskip("torch")
    calls = []

    def quantize(x, cfg):
        calls.append(("q", cfg))
        parts = quantize_float(x.numpy(), cfg)
        return tuple(None if p is None else torch.from_numpy(np.asarray(p)) for p in parts)

    def dequantize(codes, scale, gs, cfg, shape, dtype=None):
        calls.append(("d", dtype))
        gs = None if gs is None else gs.numpy()
        return torch.from_numpy(dequantize_float(codes.numpy(), scale.numpy(), gs, cfg, shape)).to(dtype)

    fake = types.SimpleNamespace(quantize_float=quantize, dequantize_float=dequantize)
    monkeypatch.setitem(sys.modules, "gpuquant.backends.triton.floats", fake)
    import gpuquant.backends.triton as triton_backend

    monkeypatch.setattr(triton_backend, "floats", fake, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    t = torch.from_numpy(_x((4, 64)))
    qt = gq.quantize(t, QuantConfig.nvfp4(), backend="triton")
    y = qt.dequantize(backend="triton")
    assert calls == [("q", QuantConfig.nvfp4()), ("d", torch.float32)]
    assert torch.equal(y, qt.dequantize(backend="numpy"))
