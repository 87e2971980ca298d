"""GGUF Q8_0 / Q4_0: byte equality with gguf.quants, the .gguf writer, a GGUFReader round trip."""

import numpy as np
import pytest
from gguf_cases import edge_blocks

import gpuquant as gq
from gpuquant.checkpoint.files import write_safetensors
from gpuquant.cli import main
from gpuquant.core.ggml_blocks import quantize_blocks

gguf = pytest.importorskip("gguf")
QTYPES = {"q8_0": gguf.GGMLQuantizationType.Q8_0, "q4_0": gguf.GGMLQuantizationType.Q4_0}


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0"])
def test_blocks_equal_gguf_quants(rng, scheme):
    cases = [edge_blocks(), (rng.standard_normal((7, 96)) * 3).astype(np.float32),
             rng.standard_normal((2, 3, 64)).astype(np.float16),
             (rng.standard_normal((300, 128)) * rng.uniform(0.01, 10, (300, 1))).astype(np.float32)]
    for x in cases:
        got = quantize_blocks(x, scheme)
        want = gguf.quants.quantize(x.astype(np.float32), QTYPES[scheme])
        assert got.dtype == np.uint8 and got.shape == want.shape
        assert np.array_equal(got, want)


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_refused(scheme, bad):
    x = np.ones((4, 64), np.float32)
    x[2, 40] = bad
    with pytest.raises(gq.NonFiniteError, match="block 5"):
        quantize_blocks(x, scheme)


@pytest.mark.parametrize("scheme,limit", [("q8_0", 127 * 65520), ("q4_0", 8 * 65520)])
def test_scale_beyond_float16_refused(scheme, limit):
    x = np.ones((2, 32), np.float32)
    x[1, 3] = limit
    with pytest.raises(gq.InvalidShapeError, match="float16"):
        quantize_blocks(x, scheme)


def test_row_length_must_be_whole_blocks():
    with pytest.raises(gq.InvalidShapeError, match="multiple of 32"):
        quantize_blocks(np.ones((2, 48), np.float32), "q8_0")


def checkpoint(tmp_path, rng, bad=False):
    tensors = {"blk.0.w": (rng.standard_normal((8, 64)) * 2).astype(np.float32),
               "blk.0.h": rng.standard_normal((4, 32)).astype(np.float16),
               "blk.0.norm": rng.standard_normal(64).astype(np.float32),
               "blk.0.odd": rng.standard_normal((3, 40)).astype(np.float32),
               "pos": np.arange(6, dtype=np.int32)}
    if bad:
        tensors["blk.0.w"][1, 2] = np.nan
    tags = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}
    path = str(tmp_path / "model.safetensors")
    write_safetensors(path, [(k, tags[v.dtype], v) for k, v in tensors.items()])
    return path, tensors


@pytest.mark.parametrize("scheme", ["q8_0", "q4_0"])
def test_cli_writes_gguf_that_reads_back(tmp_path, rng, scheme):
    src, tensors = checkpoint(tmp_path, rng)
    out = str(tmp_path / "model.gguf")
    assert main(["quantize", src, "-o", out, "--format", f"gguf-{scheme}", "--device", "cpu"]) == 0
    reader = gguf.GGUFReader(out)
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(tensors)
    for name in ("blk.0.w", "blk.0.h"):
        assert got[name].tensor_type == QTYPES[scheme]
        want = gguf.quants.quantize(tensors[name].astype(np.float32), QTYPES[scheme])
        assert np.array_equal(np.asarray(got[name].data), want)
    assert got["blk.0.norm"].tensor_type == gguf.GGMLQuantizationType.F32
    assert got["blk.0.odd"].tensor_type == gguf.GGMLQuantizationType.F32  # 40 is not 32k
    assert got["pos"].tensor_type == gguf.GGMLQuantizationType.I32
    for name in ("blk.0.norm", "blk.0.odd", "pos"):
        assert np.array_equal(np.asarray(got[name].data).reshape(tensors[name].shape),
                              tensors[name])


def test_inspect_gguf_reports_sqnr(tmp_path, rng, capsys):
    import json

    src, _ = checkpoint(tmp_path, rng)
    out = str(tmp_path / "m.gguf")
    gq.export.gguf(src, out, "q8_0")
    capsys.readouterr()
    assert main(["inspect", out, "--reference", src, "--json"]) == 0
    report = json.loads(capsys.readouterr().out,
                        parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    rows = {r["name"]: r for r in report["tensors"]}
    assert report["format"] == "gguf" and report["scheme"] == "Q8_0"
    assert 30 < rows["blk.0.w"]["sqnr_db"] < 60
    assert rows["blk.0.norm"]["sqnr_db"] is None  # exact: infinite SQNR, null as plain inspect
    assert rows["blk.0.w"]["bytes"] == 8 * 2 * 34


def test_cli_gguf_errors_leave_nothing(tmp_path, rng, capsys):
    src, _ = checkpoint(tmp_path, rng, bad=True)
    out = tmp_path / "model.gguf"
    assert main(["quantize", src, "-o", str(out), "--format", "gguf-q8_0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "non-finite" in err and "blk.0.w" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    out.write_bytes(b"mine")
    src2, _ = checkpoint(tmp_path, rng)
    assert main(["quantize", src2, "-o", str(out), "--format", "gguf-q4_0"]) == 2
    assert "--force" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main(["quantize", src2, "-o", str(out), "--format", "gguf-q4_0", "--force"]) == 0
    assert out.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize("flags", [["--scheme", "int8"], ["--asymmetric"], ["--symmetric"],
                                   ["--calibration", "entropy"], ["--granularity", "tensor"],
                                   ["--group-size", "32"], ["--axis", "1"],
                                   ["--percentile", "1", "99"], ["--ignore-nonfinite"]])
def test_cli_gguf_refuses_options_it_would_ignore(tmp_path, rng, capsys, flags):
    """Issue 19 item 15: GGUF blocks fix the scheme, range and calibration; saying otherwise
    is refused (even the default value, given explicitly), naming the option."""
    src, _ = checkpoint(tmp_path, rng)
    out = tmp_path / "model.gguf"
    assert main(["quantize", src, "-o", str(out), "--format", "gguf-q4_0", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and flags[0] in err and "--format gguf-q4_0" in err, err
    assert not out.exists()


def test_cli_gguf_name_needs_gguf_format(tmp_path, rng, capsys):
    """Issue 19 item 18: `-o x.gguf` without --format gguf-* is refused, not written as
    gpuquant safetensors under a .gguf name."""
    src, _ = checkpoint(tmp_path, rng)
    for name in ("model.gguf", "MODEL.GGUF"):
        out = tmp_path / name
        assert main(["quantize", src, "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--format gguf-q8_0" in err and str(out) in err, err
        assert not out.exists()
