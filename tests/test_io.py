"""gq.save and gq.load (gpuquant/io.py): quantized tensors and plain arrays round trip, what a
loaded file must hold, paths, bfloat16 and load(framework=, device=)."""

import json
import os
import struct
import sys

import numpy as np
import pytest
from conftest import codes_of

import gpuquant as gq
from gpuquant.checkpoint import files as safetensors_file


@pytest.fixture
def tensors(rng):
    w = rng.standard_normal((16, 40)).astype(np.float16)
    return {
        "layer.weight": gq.quantize(w, gq.QuantConfig.int4_per_group(16)),
        "layer.proj": gq.quantize(w.astype(np.float32), gq.QuantConfig.int8_per_channel(axis=-1)),
        "layer.bias": rng.standard_normal(40).astype(np.float32),
        "position_ids": np.arange(10, dtype=np.int64),
    }


def test_save_load_identity(tmp_path, tensors):
    path = tmp_path / "w.safetensors"
    gq.save(path, tensors)
    back = gq.load(path)
    assert set(back) == set(tensors)
    for name, value in tensors.items():
        got = back[name]
        if isinstance(value, gq.QuantizedTensor):
            assert got.config == value.config and got.shape == value.shape and got.dtype == value.dtype
            for a in ("data", "scale", "zero_point"):
                np.testing.assert_array_equal(getattr(got, a), getattr(value, a))
            np.testing.assert_array_equal(got.dequantize(), value.dequantize())
        else:
            assert got.dtype == value.dtype
            np.testing.assert_array_equal(got, value)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".gpuquant-")]


def test_files_are_standard_safetensors(tmp_path, tensors):
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "w.safetensors"
    gq.save(path, tensors)
    plain = load_file(str(path))
    np.testing.assert_array_equal(plain["layer.weight.qdata"], tensors["layer.weight"].data)
    assert plain["layer.weight.scale"].dtype == np.float32
    # and files written by the safetensors package load here
    other = tmp_path / "other.safetensors"
    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(other))
    np.testing.assert_array_equal(gq.load(other)["a"], np.arange(6, dtype=np.float32).reshape(2, 3))


def test_torch_bfloat16_saves_without_loss(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.randn(4, 6).to(torch.bfloat16)
    qt = gq.quantize(t, gq.QuantConfig.int8_per_channel())
    gq.save(tmp_path / "b.safetensors", {"raw": t, "q": qt})
    back = gq.load(tmp_path / "b.safetensors")
    np.testing.assert_array_equal(back["raw"], t.float().numpy())
    assert back["q"].dtype == "bfloat16"
    np.testing.assert_array_equal(codes_of(back["q"]), codes_of(qt))


def _rewrite_header(path, edit):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def test_bad_files(tmp_path, tensors):
    good = tmp_path / "w.safetensors"
    gq.save(good, tensors)
    raw = good.read_bytes()
    cases = {
        "truncated": raw[:-7],
        "not safetensors": b"PK\x03\x04 this is a zip file, not safetensors at all",
        "tiny": b"abc",
    }
    for label, blob in cases.items():
        p = tmp_path / f"{label}.safetensors"
        p.write_bytes(blob)
        with pytest.raises(gq.FormatError, match=str(p.name)):
            gq.load(p)
    with pytest.raises(gq.FormatError, match="no such file"):
        gq.load(tmp_path / "missing.safetensors")


def test_header_lies_and_versions(tmp_path, tensors):
    path = tmp_path / "w.safetensors"

    def lie_about_shape(h):
        h["layer.bias"]["shape"] = [41]

    def future_version(h):
        h["__metadata__"]["gpuquant.format_version"] = "99"

    def wrong_qdata_shape(h):
        entry = h["layer.weight.qdata"]
        entry["shape"] = [20, 16]

    for edit, message in [(lie_about_shape, "needs 164"), (future_version, "version '99'"),
                          (wrong_qdata_shape, "expected U8")]:
        gq.save(path, tensors)
        _rewrite_header(path, edit)
        with pytest.raises(gq.FormatError, match=message):
            gq.load(path)


def test_write_is_atomic(tmp_path, tensors, monkeypatch):
    path = tmp_path / "w.safetensors"
    gq.save(path, tensors)
    before = path.read_bytes()

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors_file.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        gq.save(path, {"other": np.ones(3, np.float32)})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["w.safetensors"]


def test_name_collisions(tmp_path, tensors):
    with pytest.raises(gq.QuantizationError, match="collide"):
        gq.save(tmp_path / "x.safetensors", {"a": tensors["layer.weight"], "a.scale": np.ones(2)})


# ------------------------------------------------------- second hardening pass (issue 19)
def test_a_torch_tensor_with_the_negative_bit_saves_its_values(tmp_path):
    torch = pytest.importorskip("torch")
    neg = torch.complex(torch.zeros(4), torch.arange(1.0, 5.0)).conj().imag
    assert neg.is_neg()
    qt = gq.quantize(neg, backend="numpy")
    gq.save(tmp_path / "n.safetensors", {"raw": neg, "q": qt, "bf": neg.to(torch.bfloat16)})
    back = gq.load(tmp_path / "n.safetensors")
    assert np.array_equal(back["raw"], -np.arange(1.0, 5.0, dtype=np.float32))
    assert np.array_equal(back["bf"], -np.arange(1.0, 5.0, dtype=np.float32))
    assert np.array_equal(back["q"].dequantize(), qt.dequantize().numpy())


@pytest.mark.parametrize("path", [b"w.safetensors", 5, None])
def test_paths_that_are_not_str_are_refused(tmp_path, path):
    with pytest.raises(gq.QuantizationError, match="path=.* must be a str or an os.PathLike"):
        gq.save(path, {"a": np.ones(2, np.float32)})
    with pytest.raises(gq.QuantizationError, match="path=.* must be a str"):
        gq.load(path)


def test_a_tensor_named_like_the_metadata_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    with pytest.raises(gq.FormatError, match="'__metadata__' is reserved"):
        gq.save(path, {"w": np.ones(3, np.float32), "__metadata__": np.ones(3, np.float32)})
    assert list(tmp_path.iterdir()) == []
    # a quantized tensor of that name is stored as __metadata__.qdata, ...: no clash
    gq.save(path, {"__metadata__": gq.quantize(np.ones(4, np.float32))})
    assert set(gq.load(path)) == {"__metadata__"}


@pytest.mark.parametrize("framework", ["numpy", "torch"])
@pytest.mark.parametrize("config", [gq.QuantConfig(), gq.QuantConfig.int8_per_channel(axis=0),
                                    gq.QuantConfig.int4_per_group(2, symmetric=False)])
def test_an_empty_quantized_tensor_loads_and_dequantizes_to_an_empty_array(tmp_path, framework,
                                                                           config):
    from gpuquant.core.layout import Layout

    if framework == "torch":
        pytest.importorskip("torch")
    layout = Layout.of((0, 6), config)
    qt = gq.QuantizedTensor(np.zeros(layout.packed_shape(config.bits), config.storage_dtype),
                            np.ones(layout.unit_shape, np.float32),
                            np.zeros(layout.unit_shape, np.int32), (0, 6), "float16", config)
    gq.save(tmp_path / "e.safetensors", {"e": qt})
    back = gq.load(tmp_path / "e.safetensors", framework=framework)["e"]
    for dtype, want in ((None, "float16"), ("float32", "float32")):
        y = back.dequantize(dtype=dtype)
        assert tuple(y.shape) == (0, 6) and str(y.dtype).replace("torch.", "") == want
    out = back.dequantize(out=back.dequantize())
    assert tuple(out.shape) == (0, 6)
    with pytest.raises(gq.EmptyTensorError):  # the contract: quantize refuses empty tensors
        gq.quantize(np.zeros((0, 6), np.float16), config)


# ------------------------------------------------ loaded values and load(framework=)
def _quantized_file(tmp_path):
    x = np.linspace(-1, 2, 24, dtype=np.float32).reshape(4, 6)
    path = tmp_path / "q.safetensors"
    gq.save(path, {"w": gq.quantize(x, gq.QuantConfig.int8_asymmetric())})
    return path


def _patch_data(path, key, values):
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    begin, end = json.loads(raw[8:8 + n])[key]["data_offsets"]
    raw[8 + n + begin: 8 + n + end] = np.asarray(values).tobytes()
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("key,value,match", [
    ("w.scale", np.float32(np.nan), "scale must be finite"),
    ("w.scale", np.float32(-1), "scale must be finite"),
    ("w.scale", np.float32(1e-42), "normal"),
    ("w.zero_point", np.int32(300), r"zero_point must lie in \[0, 255\]"),
])
def test_load_validates_values(tmp_path, key, value, match):
    path = _quantized_file(tmp_path)
    _patch_data(path, key, value)
    with pytest.raises(gq.FormatError, match=match):
        gq.load(path)


def test_bfloat16_round_trip_keeps_values(tmp_path):
    torch = pytest.importorskip("torch")
    t = (torch.randn(64, 256, generator=torch.Generator().manual_seed(0)) * 3).to(torch.bfloat16)
    qt = gq.quantize(t, gq.QuantConfig.int8_per_channel())
    before = qt.dequantize()
    assert before.dtype == torch.bfloat16
    gq.save(tmp_path / "b.safetensors", {"q": qt, "raw": t})
    as_numpy = gq.load(tmp_path / "b.safetensors")
    y = as_numpy["q"].dequantize()
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_array_equal(y, before.float().numpy())  # bfloat16-rounded values
    as_torch = gq.load(tmp_path / "b.safetensors", framework="torch", device="cpu")
    assert as_torch["q"].framework == "torch" and isinstance(as_torch["q"].data, torch.Tensor)
    assert torch.equal(as_torch["q"].dequantize(), before)
    assert as_torch["raw"].dtype == torch.bfloat16 and torch.equal(as_torch["raw"], t)


def test_load_framework_arguments(tmp_path, monkeypatch):
    path = _quantized_file(tmp_path)
    with pytest.raises(gq.QuantizationError, match="framework='jax'.*accepted"):
        gq.load(path, framework="jax")
    with pytest.raises(gq.QuantizationError, match="device='cuda'.*framework='torch'"):
        gq.load(path, device="cuda")
    torch = pytest.importorskip("torch")
    with pytest.raises(gq.BackendUnavailableError, match="device='nowhere'"):
        gq.load(path, framework="torch", device="nowhere")
    back = gq.load(path, framework="torch")
    assert back["w"].scale.dtype == torch.float32 and back["w"].device == "cpu"
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(gq.BackendUnavailableError, match=r"pip install 'gpuquant\[torch\]'"):
        gq.load(path, framework="torch")
