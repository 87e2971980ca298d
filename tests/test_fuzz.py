"""Fuzzing that stays in the repository (issue 13): numerics and malformed files.

(a) hypothesis over shapes (0-d to 4-d, sides 1 and odd), dtypes, schemes,
granularities (negative axes, odd and oversize groups) and min/max or
percentile calibration, with values that
include subnormals, +-3e38 and exact ties: the NumPy backend and the Triton
interpreter against tests/naive.py, codes, scales and zero points exactly equal.
(b) a generator of malformed safetensors files and indexes, run through
gq.load and the CLI: a gpuquant error (exit 2), never another exception,
nothing written outside -o.

Fixed seeds (hypothesis derandomize=True, random.Random(SEED)); about a minute in all.
"""

import json
import os
import random
import struct
import tracemalloc

import numpy as np
import pytest
from conftest import CUDA, INTERPRET, codes_of
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from naive import naive_dequantize, naive_quantize

import gpuquant as gq

pytestmark = pytest.mark.slow
SEED = 20261127
F32 = np.float32

# ------------------------------------------------------------------ (a) numerics
SPECIAL = [0.0, -0.0, 2.0 ** -149, -(2.0 ** -149), 1e-40, -3e-39, 2.0 ** -126, 0.5, -0.5, 1.5,
           -2.5, 2.5, 1.0, 3.0, -7.0, 7.0, -8.0, 127.0, -127.0, 128.0, 255.0, 1e-3, 3e38, -3e38]
values = st.one_of(st.sampled_from(SPECIAL), st.floats(-300.0, 300.0, width=32))


@st.composite
def cases(draw, max_size=150, dtypes=("float16", "float32", "float64", "bfloat16")):
    ndim = draw(st.integers(0, 4))
    shape = tuple(draw(st.lists(st.sampled_from([1, 1, 2, 3, 5, 7, 9]), min_size=ndim,
                                max_size=ndim)))
    assume(int(np.prod(shape)) <= max_size)
    raw = np.array(draw(st.lists(values, min_size=int(np.prod(shape)),
                                 max_size=int(np.prod(shape)))), np.float64).reshape(shape)
    dtype = draw(st.sampled_from(dtypes))
    if dtype == "float16":  # keep values finite in the input's own dtype
        raw = np.asarray(np.clip(raw, -65504, 65504))  # a 0-d clip gives a scalar
    grans = ["tensor", "group", "token"] + (["channel"] if ndim else [])
    gran = draw(st.sampled_from(grans))
    kw = {"granularity": gran}
    cols = shape[-1] if shape else 1
    if gran == "channel":
        kw["axis"] = draw(st.integers(-ndim, ndim - 1))
    if gran == "group":
        kw["group_size"] = draw(st.sampled_from([1, 3, 5, 7, cols + 1, 2 * cols + 3, 128]))
    if draw(st.booleans()):
        kw["calibration"] = gq.Percentile(*sorted(draw(st.lists(
            st.sampled_from([0.0, 0.01, 1.0, 12.5, 50.0, 99.9, 100.0]), min_size=2, max_size=2,
            unique=True))))
    cfg = gq.QuantConfig(scheme=draw(st.sampled_from(["int4", "int8", "int16"])),
                         symmetric=draw(st.booleans()),
                         nibble_order=draw(st.sampled_from(["high_first", "low_first"])), **kw)
    return raw, dtype, cfg


def _input(raw, dtype):
    """(the array gpuquant gets, its exact float32 values)."""
    if dtype == "bfloat16":
        import torch

        x = torch.from_numpy(raw.astype(F32)).to(torch.bfloat16)
        return x, x.float().numpy()
    x = raw.astype(dtype)
    return x, x.astype(F32)


def _as_np(a):
    return a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)


def _check_against_naive(qt, x32, cfg, backend=None):
    gran = cfg.granularity.value
    cal = cfg.calibration
    pct = (cal.lower, cal.upper) if isinstance(cal, gq.Percentile) else None
    codes, scale, zp = naive_quantize(x32, cfg.bits, cfg.symmetric, gran, cfg.axis,
                                      cfg.group_size, pct)
    assert np.array_equal(codes_of(qt), codes)
    got_scale, got_zp = _as_np(qt.scale), _as_np(qt.zero_point)
    assert got_scale.shape == scale.shape and np.array_equal(got_scale, scale)
    assert np.array_equal(got_zp, zp) and got_zp.dtype == np.int32
    want = naive_dequantize(codes, scale, zp, x32.shape, gran, cfg.axis, cfg.group_size)
    with np.errstate(over="ignore"):
        assert np.array_equal(_as_np(qt.dequantize(dtype="float32", backend=backend)), want)


def fuzz(examples):
    return settings(derandomize=True, deadline=None, database=None, max_examples=examples,
                    suppress_health_check=list(HealthCheck))


@fuzz(1000)
@given(cases())
def test_numpy_backend_matches_naive(case):
    raw, dtype, cfg = case
    if dtype == "bfloat16":
        pytest.importorskip("torch")
    x, x32 = _input(raw, dtype)
    with np.errstate(over="ignore"):  # naive's own float32 steps may overflow at +-3e38
        _check_against_naive(gq.quantize(x, cfg, backend="numpy"), x32, cfg)


@fuzz(300)
@given(cases(max_size=40, dtypes=("float16", "float32", "bfloat16")))
def test_triton_interpreter_matches_naive(case):
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    if not (CUDA or INTERPRET):
        pytest.skip("needs a CUDA device or TRITON_INTERPRET=1")
    raw, dtype, cfg = case
    x, x32 = _input(raw, dtype)
    x = (x if isinstance(x, torch.Tensor) else torch.from_numpy(x)).to(
        "cuda" if CUDA and not INTERPRET else "cpu")
    with np.errstate(over="ignore"):
        _check_against_naive(gq.quantize(x, cfg, backend="triton"), x32, cfg, "triton")


# ------------------------------------------------------------ (b) malformed files
def _pack(header, data=b""):
    blob = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(blob)) + blob + data


def _split(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _valid_file(tmp_path):
    x = np.linspace(-1, 2, 24, dtype=F32).reshape(4, 6)
    path = tmp_path / "valid.safetensors"
    gq.save(path, {"w": gq.quantize(x, gq.QuantConfig.int4_per_group(4, symmetric=False)),
                   "b": np.arange(3, dtype=F32)})
    return path.read_bytes()


def _edit(raw, change):
    header, data = _split(raw)
    change(header)
    return _pack(header, data)


def _tensors(change):
    """Edit the gpuquant.tensors metadata (a JSON string) of the valid file."""
    def apply(header):
        meta = header["__metadata__"]
        described = json.loads(meta["gpuquant.tensors"])
        result = change(described)
        meta["gpuquant.tensors"] = result if isinstance(result, str) else json.dumps(described)
    return apply


def _set_data(raw, key, value):
    header, data = _split(raw)
    begin, end = header[key]["data_offsets"]
    data = bytearray(data)
    data[begin:end] = np.full((end - begin) // value.itemsize, value).tobytes()
    return _pack(header, bytes(data))


def header_classes(raw):
    """name -> bytes of a file every reader must refuse (FormatError)."""
    entry = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    cases = {
        "length past EOF": struct.pack("<Q", len(raw)) + raw[8:],
        "length 2^63": struct.pack("<Q", 2 ** 63) + raw[8:],
        "length 2^64-1": b"\xff" * 8 + raw[8:],
        "empty": b"",
        "non-JSON": _pack(b"\x00\xffgarbage"),
        "JSON array": _pack(b"[1, 2, 3]"),
        "deep nesting": _pack(b'{"a":' + b"[" * 200_000 + b"]" * 200_000 + b"}"),
        "huge integer": _pack(b'{"a": {"dtype": "F32", "shape": [' + b"7" * 5000
                              + b'], "data_offsets": [0, 8]}}', bytes(8)),
        "list dtype": _pack({"a": dict(entry, dtype=["F32"])}, bytes(8)),
        "bool shape": _pack({"a": dict(entry, shape=[True, True])}, bytes(8)),
        "bool offsets": _pack({"a": {"dtype": "U8", "shape": [1],
                                     "data_offsets": [False, True]}}, bytes(1)),
        "string offsets": _pack({"a": dict(entry, data_offsets=["0", "8"])}, bytes(8)),
        "null entry": _pack({"a": None}),
        "overlap": _pack({"a": entry, "b": dict(entry, data_offsets=[4, 12])}, bytes(12)),
        "out of range": _pack({"a": dict(entry, data_offsets=[8, 16])}, bytes(8)),
        "shape product overflow": _pack({"a": dict(entry, shape=[2 ** 32, 2 ** 32, 2 ** 32],
                                                   data_offsets=[0, 0])}),
        "zero-size giant shape": _pack({"a": dict(entry, shape=[2 ** 32, 2 ** 32, 0],
                                                  data_offsets=[0, 0]), "b": entry}, bytes(8)),
        "65 dims": _pack({"a": dict(entry, shape=[1] * 65, data_offsets=[0, 4])}, bytes(4)),
        "unknown dtype": _pack({"a": dict(entry, dtype="F4")}, bytes(8)),
        "NUL in name": _pack({"a\x00b": entry}, bytes(8)),
        "control character in name": _pack({"a\x1b[2Jb": entry}, bytes(8)),
        "lone surrogate name": _pack(b'{"\\udc00": {"dtype": "F32", "shape": [2], '
                                     b'"data_offsets": [0, 8]}}', bytes(8)),
        "non-string metadata": _pack({"__metadata__": {"k": 1}, "a": entry}, bytes(8)),
        "metadata list": _pack({"__metadata__": ["k", "v"], "a": entry}, bytes(8)),
        "truncated data": raw[:-3],
    }
    return cases


def gpuquant_classes(raw):
    """name -> bytes of a well-formed safetensors file with inconsistent gpuquant metadata."""
    def drop(key):
        def apply(header):
            begin, end = header.pop(key)["data_offsets"]
            for other in header.values():  # keep the data tiled: shift later tensors down
                if isinstance(other, dict) and "data_offsets" in other and \
                        other["data_offsets"][0] >= end:
                    other["data_offsets"] = [o - (end - begin) for o in other["data_offsets"]]
        return apply

    header, data = _split(raw)
    begin, end = header["w.scale"]["data_offsets"]
    without_scale = _edit(raw, drop("w.scale"))
    without_scale = without_scale[:len(without_scale) - len(data)] + data[:begin] + data[end:]
    return {
        "missing .scale": without_scale,
        "names an absent tensor": _edit(raw, _tensors(lambda d: d.update(
            ghost={"config": {"scheme": "int8"}, "shape": [2], "dtype": "float32"}))),
        "tensors not JSON": _edit(raw, _tensors(lambda d: "{not json")),
        "tensors deeply nested": _edit(raw, _tensors(lambda d: "[" * 100_000)),
        "tensors a list": _edit(raw, _tensors(lambda d: "[]")),
        "config not a dict": _edit(raw, _tensors(lambda d: d["w"].update(config=[1]))),
        "config unknown key": _edit(raw, _tensors(lambda d: d["w"]["config"].update(bits=4))),
        "shape of strings": _edit(raw, _tensors(lambda d: d["w"].update(shape=["4", "6"]))),
        "shape disagrees": _edit(raw, _tensors(lambda d: d["w"].update(shape=[4, 7]))),
        "dtype unknown": _edit(raw, _tensors(lambda d: d["w"].update(dtype="int8"))),
        "future version": _edit(raw, lambda h: h["__metadata__"].update(
            {"gpuquant.format_version": "9"})),
        "NaN scale": _set_data(raw, "w.scale", F32(np.nan)),
        "zero point out of range": _set_data(raw, "w.zero_point", np.int32(99)),
    }


def _random_variants(raw, rng):
    """Truncations and header byte flips: each must load or raise a gpuquant error."""
    (n,) = struct.unpack("<Q", raw[:8])
    out = {f"cut at {k}": raw[:k] for k in sorted(rng.sample(range(len(raw)), 12))}
    for i in range(40):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(8, 8 + n)] = rng.choice(b'{}[]",:0123456789-eE.tfn \\x\x00\xff')
        out[f"flip {i}"] = bytes(b)
    return out


def _files_state(root):
    return sorted((p, os.path.getsize(os.path.join(d, p)))
                  for d, _, files in os.walk(root) for p in files)


def _cli(argv, capsys):
    main = pytest.importorskip("gpuquant.cli").main

    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


def test_malformed_files_raise_gpuquant_errors(tmp_path):
    raw = _valid_file(tmp_path)
    assert isinstance(gq.load(tmp_path / "valid.safetensors")["w"], gq.QuantizedTensor)
    cases = {**header_classes(raw), **gpuquant_classes(raw)}
    for label, blob in cases.items():
        path = tmp_path / "case.safetensors"
        path.write_bytes(blob)
        tracemalloc.start()
        try:
            with pytest.raises(gq.QuantizationError):
                gq.load(path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # deep nesting costs the parser's own stack frames, not heap: 2x the file + 1 MiB
        assert peak < 2 * len(blob) + (1 << 20), (label, peak)
    for blob in _random_variants(raw, random.Random(SEED)).values():
        path = tmp_path / "case.safetensors"
        path.write_bytes(blob)
        try:
            gq.load(path)
        except gq.QuantizationError:
            pass


def _build_valid():
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        return _valid_file(Path(folder))


VALID = _build_valid()  # a few hundred bytes, built once at collection
CLASSES = {**header_classes(VALID), **gpuquant_classes(VALID)}
CLI_BRANCH: set = set()  # cases the CLI still gets wrong (strict xfail); none since the merge


def _cli_params():
    for label in CLASSES:
        for command in ("inspect", "dequantize", "quantize"):
            marks = [pytest.mark.xfail(strict=True, reason="fixed on the cli branch")] \
                if (command, label) in CLI_BRANCH else []
            yield pytest.param(command, label, marks=marks, id=f"{command}: {label}")


@pytest.mark.parametrize("command,label", list(_cli_params()))
def test_cli_exits_2_and_writes_nothing_outside_o(tmp_path, capsys, command, label):
    path = tmp_path / "in" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(CLASSES[label])
    before = _files_state(tmp_path)
    out = tmp_path / "out" / "q.safetensors"
    out.parent.mkdir()
    argv = [command, str(path)] + ([] if command == "inspect" else ["-o", str(out)])
    argv += ["--device", "cpu"] if command == "quantize" else []
    rc, err = _cli(argv, capsys)
    assert rc == 2, (rc, err)
    assert err.startswith("gpuquant: error:") and err.count("\n") == 1, err
    assert _files_state(tmp_path) == before  # nothing written, not even inside -o


# --------------------------------------------------------------- indexes (CLI only)
def _index_case(root, label):
    """Build the sharded checkpoint of one index class under root/ckpt; return its path."""
    ckpt = root / "ckpt"
    ckpt.mkdir()
    (ckpt / "x.safetensors").write_bytes(VALID)
    index = {"metadata": {"total_size": 0}, "weight_map": {"b": "x.safetensors"}}
    if label == "escaping ../":
        (root / "outside.safetensors").write_bytes(VALID)
        index["weight_map"] = {"b": "../outside.safetensors"}
    elif label == "absolute path":
        (root / "elsewhere.safetensors").write_bytes(VALID)
        index["weight_map"] = {"b": str(root / "elsewhere.safetensors")}
    elif label == "duplicate shard names":
        for sub in ("a", "c"):
            (ckpt / sub).mkdir()
            (ckpt / sub / "x.safetensors").write_bytes(VALID)
        index["weight_map"] = {"b": "a/x.safetensors", "w.qdata": "c/x.safetensors"}
    elif label == "weight_map a list":
        index["weight_map"] = ["x.safetensors"]
    elif label == "shard names not strings":
        index["weight_map"] = {"b": 7}
    elif label == "missing shard":
        index["weight_map"] = {"b": "y.safetensors"}
    elif label == "metadata a list":
        index["metadata"] = ["total_size"]
    text = json.dumps(index).encode()
    if label == "index not JSON":
        text = b'{"weight_map": '
    elif label == "index deeply nested":
        text = b'{"weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (ckpt / "model.safetensors.index.json").write_bytes(text)
    return ckpt


INDEX_CLASSES = ["escaping ../", "absolute path", "duplicate shard names", "weight_map a list",
                 "shard names not strings", "missing shard", "metadata a list", "index not JSON",
                 "index deeply nested"]
INDEX_CLI_BRANCH: set = set()  # malformed indexes the CLI still accepts; none since the merge


def _index_params():
    for label in INDEX_CLASSES:
        for command in ("inspect", "dequantize", "quantize"):
            marks = [pytest.mark.xfail(strict=True, reason="fixed on the cli branch")] \
                if label in INDEX_CLI_BRANCH else []
            yield pytest.param(command, label, marks=marks, id=f"{command}: {label}")


@pytest.mark.parametrize("command,label", list(_index_params()))
def test_cli_refuses_bad_indexes(tmp_path, capsys, command, label):
    ckpt = _index_case(tmp_path, label)
    before = _files_state(tmp_path)
    argv = [command, str(ckpt)] + ([] if command == "inspect" else ["-o", str(tmp_path / "out")])
    argv += ["--device", "cpu"] if command == "quantize" else []
    rc, err = _cli(argv, capsys)
    assert rc == 2, (rc, err)
    assert err.startswith("gpuquant: error:") and err.count("\n") == 1, err
    assert _files_state(tmp_path) == before
