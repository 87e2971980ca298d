"""gpuquant.checkpoint.files, the safetensors reader and writer (through gq.load / gq.save):
malformed headers, resource limits, names, and files of the safetensors package."""

import json
import os
import struct
import time
import tracemalloc

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.checkpoint import files as safetensors_file


def _file(tmp_path, header, data=b"", name="bad.safetensors"):
    blob = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _gq_meta(tensors):
    return {"gpuquant.format_version": "1", "gpuquant.tensors": json.dumps(tensors)}


MALFORMED = {
    "deep nesting": b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "5000-digit integer": b'{"a": {"dtype": "F32", "shape": [' + b"9" * 5000
                          + b'], "data_offsets": [0, 8]}}',
    "list as dtype": {"a": _entry(dtype=["F32"])},
    "dict as dtype": {"a": _entry(dtype={"x": 1})},
    "booleans as offsets": {"a": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}},
    "booleans as shape": {"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}},
    "float in shape": {"a": _entry(shape=[2.0])},
    "offsets not a pair": {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}},
    "offsets a string": {"a": {"dtype": "F32", "shape": [2], "data_offsets": "0,8"}},
    "2^32 x 2^32 x 0": {"a": _entry(shape=[2 ** 32, 2 ** 32, 0], offsets=(0, 0)),
                        "b": _entry()},
    "2^64 dimension": {"a": _entry(shape=[2 ** 64, 0], offsets=(0, 0)), "b": _entry()},
    "65 dimensions": {"a": _entry(shape=[1] * 65, offsets=(0, 4)), "b": _entry(offsets=(4, 12))},
    "lone surrogate name": b'{"a\\ud800": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}',
    "control character name": {"a\x00b": _entry()},
    "lone surrogate metadata": b'{"__metadata__": {"k": "\\udfff"}, "a": {"dtype": "F32", '
                               b'"shape": [2], "data_offsets": [0, 8]}}',
    "metadata not strings": {"__metadata__": {"k": 1}, "a": _entry()},
    "metadata a list": {"__metadata__": ["k"], "a": _entry()},
    "entry a list": {"a": [1, 2, 3]},
    "entry missing shape": {"a": {"dtype": "F32", "data_offsets": [0, 8]}},
    "unknown dtype": {"a": _entry(dtype="F8_E4M3")},
    "NaN constant": b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 8]}}',
    "overlapping offsets": {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))},
    "gap in data": {"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(12, 20))},
    "out of range": {"a": _entry(offsets=(16, 24))},
    "array header": [1, 2],
    "not JSON": b"\x80\x81 not json",
    "gpuquant names absent arrays": {"__metadata__": _gq_meta(
        {"w": {"config": {"scheme": "int8"}, "shape": [2], "dtype": "float32"}}), "a": _entry()},
    "gpuquant tensors not JSON": {"__metadata__": {"gpuquant.format_version": "1",
                                                   "gpuquant.tensors": "{"}, "a": _entry()},
    "gpuquant tensors deep": {"__metadata__": {"gpuquant.format_version": "1",
                                               "gpuquant.tensors": "[" * 100_000},
                              "a": _entry()},
    "gpuquant tensors without version": {"__metadata__": {"gpuquant.tensors": "{}"},
                                         "a": _entry()},
    "gpuquant bad config": {"__metadata__": _gq_meta(
        {"w": {"config": {"scheme": ["int8"]}, "shape": [2], "dtype": "float32"}}),
        "a": _entry()},
    "gpuquant shape of bools": {"__metadata__": _gq_meta(
        {"w": {"config": {}, "shape": [True], "dtype": "float32"}}), "a": _entry()},
    "gpuquant dtype a list": {"__metadata__": _gq_meta(
        {"w": {"config": {}, "shape": [2], "dtype": ["float32"]}}), "a": _entry()},
}


@pytest.mark.parametrize("label", sorted(MALFORMED))
def test_malformed_headers_raise_format_error(tmp_path, label):
    path = _file(tmp_path, MALFORMED[label], data=bytes(16) if "range" in label else bytes(8))
    if label in ("gap in data", "overlapping offsets"):
        path = _file(tmp_path, MALFORMED[label], data=bytes(20 if "gap" in label else 12))
    if label == "65 dimensions":
        path = _file(tmp_path, MALFORMED[label], data=bytes(12))
    with pytest.raises(gq.FormatError, match="bad.safetensors"):
        gq.load(path)


def test_header_length_limits(tmp_path):
    for n in (2 ** 63, (100 << 20) + 1):
        path = tmp_path / "big.safetensors"
        path.write_bytes(struct.pack("<Q", n) + b"{}")
        with pytest.raises(gq.FormatError, match=r"limit of 104857600 bytes \(100 MiB"):
            gq.load(path)


def test_too_many_tensors_are_refused_with_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors_file, "MAX_TENSORS", 10)
    header = {f"t{i}": _entry(shape=(0,), offsets=(0, 0)) for i in range(11)}
    with pytest.raises(gq.FormatError, match="at most 10 per file"):
        gq.load(_file(tmp_path, header))
    # counted after parsing too, where a name spelled with escapes hides "data_offsets"
    escaped = {f"t{i}": {"dtype": "U8", "shape": [0], "data_offset\\u0073": [0, 0]}
               for i in range(11)}
    blob = json.dumps(escaped).replace("\\\\u0073", "\\u0073").encode()
    with pytest.raises(gq.FormatError, match="at most 10 per file"):
        gq.load(_file(tmp_path, blob))
    with pytest.raises(gq.FormatError, match="at most 10"):
        gq.save(tmp_path / "out.safetensors", {f"t{i}": np.ones(1) for i in range(11)})
    assert safetensors_file.MAX_TENSORS == 10 and safetensors_file.MAX_HEADER_BYTES == 100 << 20


def test_a_huge_header_is_refused_before_it_is_parsed(tmp_path):
    n = safetensors_file.MAX_TENSORS + 1
    entries = b",".join(b'"t%d":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}' % i
                        for i in range(n))
    path = _file(tmp_path, b"{" + entries + b"}")
    size = path.stat().st_size
    tracemalloc.start()
    try:
        with pytest.raises(gq.FormatError, match=f"lists {n} tensors.*at most 200000 per file"):
            gq.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.5 * size  # the header bytes once, never a dict per entry (~1.4 kB each)


def test_missing_tensor_names_raise_format_error(tmp_path):
    path = tmp_path / "w.safetensors"
    gq.save(path, {"a": np.ones(2, np.float32)})
    with safetensors_file.SafetensorsFile(path) as f:
        for method in (f.dtype_tag, f.shape, f.nbytes, f.get):
            with pytest.raises(gq.FormatError, match="no tensor named 'b'"):
                method("b")


@pytest.mark.parametrize("duplicate", ["__metadata__", "plain", "dtype"])
def test_duplicate_json_keys_in_a_header_are_refused(tmp_path, duplicate):
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = tmp_path / "d.safetensors"
    qt = gq.quantize(np.arange(8, dtype=np.float32))
    gq.save(path, {"q": qt, "plain": np.ones(2, np.float32)})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = raw[8:8 + n].decode().rstrip()
    if duplicate == "__metadata__":  # a second, empty metadata hides gpuquant's
        header = header[:-1] + ',"__metadata__":{}}'
    elif duplicate == "plain":
        entry = json.loads(header)["plain"]
        header = header[:-1] + f',"plain":{json.dumps(entry)}}}'
    else:
        header = header.replace('"dtype":"F32"', '"dtype":"F32","dtype":"F32"', 1)
    blob = header.encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])
    with pytest.raises(gq.FormatError, match=f"duplicate key '{duplicate}'"):
        gq.load(path)
    if duplicate == "__metadata__":  # the safetensors package refuses this one too
        with pytest.raises(SafetensorError):
            load_file(str(path))


def test_files_of_the_safetensors_package_still_load(tmp_path):
    from safetensors.numpy import save_file

    arrays = {"z": np.zeros((0, 3), np.float32), "a": np.arange(6, dtype=np.int16),
              "b": np.ones((2, 2), np.float64)}
    save_file(arrays, str(tmp_path / "p.safetensors"), metadata={"format": "np"})
    back = gq.load(tmp_path / "p.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(back[k], v)


# ------------------------------------------------------------ resource bounds
def test_save_is_linear_in_the_tensor_count(tmp_path):
    small = {f"t{i}": np.ones(2, np.float32) for i in range(4000)}
    big = {f"t{i}": np.ones(2, np.float32) for i in range(40000)}
    # CPU time of this process (not wall time: the machine is shared and other jobs stretch
    # the wall clock); best of 3 each. 40k tensors took 15 s before (a quadratic name check,
    # 100x the 4k time); linear is 10x: 10x the tensors may take at most 40x the time
    def cost(arrays, name):
        times = []
        for _ in range(3):
            t0 = time.process_time()
            gq.save(tmp_path / name, arrays)
            times.append(time.process_time() - t0)
            (tmp_path / name).unlink()
        return min(times)

    t_small, t_big = cost(small, "s.safetensors"), cost(big, "b.safetensors")
    assert t_big < max(40 * t_small, 0.5), (t_small, t_big)
    gq.save(tmp_path / "b.safetensors", big)
    assert len(gq.load(tmp_path / "b.safetensors")) == 40000


@pytest.mark.parametrize("tensors,metadata", [({"a\x00b": np.ones(2)}, None),
                                               ({"\ud800": np.ones(2)}, None),
                                               ({"a": np.ones(2)}, {"k": "\udfff"})])
def test_save_refuses_what_load_would_refuse(tmp_path, tensors, metadata):
    with pytest.raises(gq.FormatError, match="could not be read back"):
        gq.save(tmp_path / "w.safetensors", tensors, metadata)
    assert os.listdir(tmp_path) == []
