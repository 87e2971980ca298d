import json
import os
import struct

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
