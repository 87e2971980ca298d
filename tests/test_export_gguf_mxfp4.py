"""GGUF MXFP4 (issue 22 items 3 and 5): byte equality with gguf.quants, the Triton kernel
against the NumPy blocks, the .gguf writer, GGUFReader and `inspect --reference`."""

import json
import warnings

import numpy as np
import pytest
from conftest import CUDA, INTERPRET, one_line_error
from gguf_cases import edge_blocks

import gpuquant as gq
from gpuquant.checkpoint.files import write_safetensors
from gpuquant.cli import main
from gpuquant.core.ggml_blocks import mxfp4_exponent, quantize_blocks
from gpuquant.formats import codecs

gguf = pytest.importorskip("gguf")
MXFP4 = gguf.GGMLQuantizationType.MXFP4
F32 = np.float32
MIDPOINTS = np.array([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], F32)  # of E2M1 neighbours


def reference(x: np.ndarray) -> np.ndarray:
    """gguf-py's bytes (its float -> uint8 cast of a negative exponent warns)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return gguf.quants.quantize(np.asarray(x, F32), MXFP4)


def block(first: float, rest) -> np.ndarray:
    """One block: ``first``, then ``rest`` repeated to fill 31 values."""
    rest = np.resize(np.asarray(rest, F32), 31)
    return np.concatenate([[F32(first)], rest]).astype(F32)


def below(v) -> F32:
    return np.nextafter(F32(v), F32(0))


def mxfp4_edges() -> np.ndarray:
    """Blocks where ggml's MXFP4 rules matter, one a row (scale s = 2^(e-127))."""
    ties = np.concatenate([MIDPOINTS, -MIDPOINTS, np.nextafter(MIDPOINTS, F32(9)),
                           np.nextafter(MIDPOINTS, F32(0))])
    rows = [
        np.zeros(32, F32), -np.zeros(32, F32), block(-0.0, [0.0]),
        block(4, ties),                               # s = 1: every tie, and beside it
        block(-7.9, ties * F32(-1)),
        block(1.5 * 2 ** 10, [6 * 2 ** 8, -6 * 2 ** 8, 2 ** 8, 0]),  # exactly 6s
        block(below(2 ** 11), [7 * 2 ** 8, -7.5 * 2 ** 8, 1.75 * 2 ** 10]),  # over 6s
        block(4, [-0.1, 0.1, -0.25, 0.2499]),         # rounds to zero: +0 (code 0)
        block(2 ** -149, [2 ** -149, -2 ** -149, 0]),  # the smallest subnormal amax
        block(below(2 ** -126), [2 ** -130, -2 ** -127]),  # subnormal amax: e wraps
        block(2 ** -126, [2 ** -127, -2 ** -126]),    # e = 255 (wrapped)
        block(1.5 * 2 ** -125, [2 ** -127, -2 ** -126, 2 ** -149]),  # e = 0
        block(2 ** -124, [2 ** -126, 2 ** -125 * 3]),
        block(np.finfo(F32).max, [2 ** 127, -1.5 * 2 ** 127, 1e38, 1.0]),  # e = 253
        block(-(2 ** 127), [1.75 * 2 ** 126, 1e30]),
        block(3e-39, [-3e-39, 1e-39, 2.9e-39]),
    ]
    return np.stack(rows)


def power_of_two_sweep() -> np.ndarray:
    """For every float32 exponent, amaxes at and just below the next power of two, where
    gguf-py's float32 log2 rounds up."""
    rng = np.random.default_rng(7)
    rows = []
    for k in range(-148, 128):
        for amax in (F32(2.0 ** k), below(2.0 ** k), np.nextafter(below(2.0 ** k), F32(0)),
                     F32(2.0 ** k * (1 - 2 ** -18)), F32(2.0 ** k * 0.75)):
            rows.append(block(amax, rng.uniform(-1, 1, 31) * amax))
    return np.stack(rows)


def random_cases(rng) -> list[np.ndarray]:
    bits = rng.integers(0, 2 ** 32, (400, 32), dtype=np.uint64).astype(np.uint32).view(F32)
    return [(rng.standard_normal((37, 96)) * 4).astype(F32),
            rng.standard_normal((3, 2, 64)).astype(np.float16),
            (rng.standard_normal((300, 128)) * rng.uniform(1e-3, 1e3, (300, 1))).astype(F32),
            np.where(np.isfinite(bits), bits, F32(1)).astype(F32)]  # every exponent


def test_blocks_equal_gguf_quants(rng):
    for x in [edge_blocks(), mxfp4_edges(), power_of_two_sweep(), *random_cases(rng)]:
        got = quantize_blocks(x, "mxfp4")
        want = reference(x)
        assert got.dtype == np.uint8 and got.shape == want.shape == (*x.shape[:-1],
                                                                     x.shape[-1] // 32 * 17)
        assert np.array_equal(got, want)


def test_layout_and_rules_spelled_out():
    """The bytes of one block by hand: E8M0 byte, element j low and j + 16 high nibble,
    ties toward zero, +0 for a negative value that rounds to zero."""
    x = np.zeros(32, F32)
    x[0], x[16] = 4.0, 0.75          # s = 1: 4 is code 6; 0.75 ties 0.5 / 1 -> 0.5 (code 1)
    x[1], x[17] = -1.75, -0.1        # -1.75 ties -> -1.5 (code 8 | 3); -0.1 -> +0
    x[2], x[18] = 3.5, 5.0           # 3.5 -> 3 (code 5), 5 -> 4 (code 6)
    got = quantize_blocks(x[None], "mxfp4")[0]
    assert got[0] == 127 + 0 and got[1] == 6 | 1 << 4 and got[2] == 0xB and got[3] == 5 | 6 << 4
    assert np.array_equal(got, reference(x[None])[0])
    # below(8) = 8 - 2^-21: float32 log2 gives 3, not 2.99999991 (exponent 128, not 127);
    # 2^-126: -126 - 2 + 127 = -1 wraps to 255
    amax = np.array([0, below(4), below(8), 2.0 ** -126], F32)
    assert mxfp4_exponent(amax).tolist() == [0, 126, 128, 255]


def test_where_ocp_mx_rounds_otherwise(rng):
    """gpuquant's OCP MXFP4 (QuantConfig.mxfp4, floor rule) stores the same E8M0 bytes and
    E2M1 codes for data without ties (its -0 apart) and dequantizes to the same values;
    at a tie it rounds half to even where ggml rounds toward zero."""
    x = (rng.standard_normal((16, 64)) * rng.uniform(0.1, 10, (16, 1))).astype(F32)
    qt = gq.quantize(x, gq.QuantConfig.mxfp4(scale_rule="floor"), backend="numpy")
    blocks = quantize_blocks(x, "mxfp4").reshape(16, 2, 17)
    assert np.array_equal(blocks[:, :, 0], np.asarray(qt.scale))
    nib = blocks[:, :, 1:]
    ggml = np.concatenate([nib & 0xF, nib >> 4], axis=2).reshape(16, 64)
    ocp = codecs.unpack_low_first(np.asarray(qt.data), 64).reshape(16, 64)
    assert np.array_equal(np.where(ocp == 8, 0, ocp), ggml)
    ggml_values = gguf.quants.dequantize(blocks.reshape(16, 34), MXFP4)
    assert np.array_equal(ggml_values, qt.dequantize())
    tie = block(4, [0.75, 1.75, 3.5, -0.75])[None]
    ocp = codecs.unpack_low_first(np.asarray(gq.quantize(
        tie, gq.QuantConfig.mxfp4(scale_rule="floor"), backend="numpy").data), 32)
    assert ocp[0, 1:5].tolist() == [2, 4, 6, 10]  # 1.0, 2.0, 4.0, -1.0
    assert (quantize_blocks(tie, "mxfp4")[0, 1:3] & 0xF).tolist() == [6, 1]  # 4, then 0.5
    assert np.array_equal(quantize_blocks(tie, "mxfp4"), reference(tie))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_refused(bad):
    """As Q8_0 and Q4_0: gguf-py would write a block (NaN: exponent 0 and garbage codes)."""
    x = np.ones((4, 64), F32)
    x[2, 40] = bad
    with pytest.raises(gq.NonFiniteError, match="block 5"):
        quantize_blocks(x, "mxfp4")


def test_row_length_must_be_whole_blocks():
    with pytest.raises(gq.InvalidShapeError, match="MXFP4 needs a last dimension"):
        quantize_blocks(np.ones((2, 48), F32), "mxfp4")


# --------------------------------------------------------------- the Triton kernel
def _triton():
    pytest.importorskip("triton")
    torch = pytest.importorskip("torch")
    if not (CUDA or INTERPRET):
        pytest.skip("needs a CUDA device or TRITON_INTERPRET=1")
    from gpuquant.backends.triton import export

    device = "cuda" if CUDA and not INTERPRET else "cpu"
    return torch, export, lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)


def test_kernel_equals_numpy(rng):
    torch, export, dev = _triton()
    for x in [mxfp4_edges(), power_of_two_sweep(), *random_cases(rng)]:
        got = export.quantize_gguf(dev(x), "mxfp4").cpu().numpy()
        assert np.array_equal(got, quantize_blocks(x, "mxfp4"))
    from gpuquant.backends import _make

    values = (rng.standard_normal((6, 64)) * 3).astype(F32)  # bfloat16 bits, both backends
    bits = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy()
    want = quantize_blocks(bits, "mxfp4", bf16_bits=True)
    assert np.array_equal(want, reference((bits.view(np.uint16).astype(np.uint32) << 16).view(F32)))
    assert np.array_equal(_make("numpy").quantize_gguf(bits, "mxfp4", bf16_bits=True), want)
    got = _make("triton").quantize_gguf(dev(bits), "mxfp4", bf16_bits=True)
    assert np.array_equal(got.cpu().numpy(), want)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter casts NaN
def test_kernel_refuses_nonfinite():
    _, export, dev = _triton()
    x = np.ones((3, 64), F32)
    x[1, 7] = np.inf
    with pytest.raises(gq.NonFiniteError):
        export.quantize_gguf(dev(x), "mxfp4")


@pytest.mark.slow
def test_kernel_compiles_for_sm90():
    """PTX for sm_90 without approximate float32 log2 or a flushed amax
    (compile_gguf_mxfp4.py)."""
    pytest.importorskip("triton")
    from ptx_checks import compile_report

    report = compile_report("compile_gguf_mxfp4.py")
    assert report["problems"] == [] and report["kernels"] == ["mxfp4_kernel"]
    assert report["compiled"] == 3  # float16, bfloat16, float32 inputs


# --------------------------------------------------------------- the .gguf file and the CLI
def checkpoint(tmp_path, rng, bad=False) -> tuple[str, dict]:
    """A folder of two shards: 2-D float32/float16/bfloat16 weights, a 1-D norm, rows of 40
    and an integer tensor."""
    import torch

    tensors = {"blk.0.w": (rng.standard_normal((8, 64)) * 2).astype(F32),
               "blk.0.h": rng.standard_normal((4, 32)).astype(np.float16),
               "blk.0.norm": rng.standard_normal(64).astype(F32),
               "blk.1.b": rng.standard_normal((2, 3, 32)).astype(F32),
               "blk.1.odd": rng.standard_normal((3, 40)).astype(F32),
               "pos": np.arange(6, dtype=np.int32)}
    if bad:
        tensors["blk.1.b"][1, 2, 5] = np.nan
    bf16 = torch.from_numpy(tensors["blk.1.b"]).to(torch.bfloat16)
    tensors["blk.1.b"] = bf16.float().numpy()  # the values the bfloat16 tensor holds
    folder = tmp_path / "model"
    folder.mkdir()
    tags = {np.dtype(F32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int32): "I32"}
    first = [(k, tags[v.dtype], v) for k, v in tensors.items() if k.startswith("blk.0")]
    second = [(k, tags[v.dtype], v) for k, v in tensors.items()
              if not k.startswith("blk.0") and k != "blk.1.b"]
    second.append(("blk.1.b", "BF16", bf16.view(torch.int16).numpy()))
    write_safetensors(str(folder / "model-00001-of-00002.safetensors"), first)
    write_safetensors(str(folder / "model-00002-of-00002.safetensors"), second)
    return str(folder), tensors


def test_cli_writes_mxfp4_gguf_that_reads_back(tmp_path, rng, capsys):
    pytest.importorskip("torch")
    src, tensors = checkpoint(tmp_path, rng)
    out = str(tmp_path / "model.gguf")
    assert main(["quantize", src, "-o", out, "--format", "gguf-mxfp4", "--device", "cpu"]) == 0
    assert "wrote 3 gguf-mxfp4 tensor(s) and 3 unquantized" in capsys.readouterr().out
    reader = gguf.GGUFReader(out)
    field = reader.fields["general.file_type"]
    assert int(field.parts[field.data[0]][0]) == gguf.LlamaFileType.MOSTLY_MXFP4_MOE == 38
    got = {t.name: t for t in reader.tensors}
    assert set(got) == set(tensors)
    for name in ("blk.0.w", "blk.0.h", "blk.1.b"):
        assert got[name].tensor_type == MXFP4
        assert np.array_equal(np.asarray(got[name].data), reference(tensors[name]))
        x = tensors[name].astype(F32)
        values = gguf.quants.dequantize(np.asarray(got[name].data), MXFP4).reshape(x.shape)
        own = gq.quantize(x, gq.QuantConfig.mxfp4(scale_rule="floor"),
                          backend="numpy").dequantize()
        # gpuquant's OCP MXFP4 gives the same values but at ties, which the bfloat16 values
        # (8 significant bits) hit: there ggml's value is the smaller, as near as OCP's
        apart = values != own
        assert np.array_equal(np.abs(values - x)[apart], np.abs(own - x)[apart])
        assert (np.abs(values) < np.abs(own))[apart].all()
        assert apart.any() == (name == "blk.1.b"), name
    kept = {"blk.0.norm": "F32", "blk.1.odd": "F32", "pos": "I32"}  # 1-D, 40 = not 32k, int
    for name, kind in kept.items():
        assert got[name].tensor_type.name == kind
        assert np.array_equal(np.asarray(got[name].data).reshape(tensors[name].shape),
                              tensors[name])


def test_inspect_reports_mxfp4_sqnr(tmp_path, rng, capsys):
    pytest.importorskip("torch")
    src, tensors = checkpoint(tmp_path, rng)
    out = str(tmp_path / "m.gguf")
    stats = gq.export.gguf(src, out, "mxfp4")
    assert stats["quantized"] == 3 and stats["kept"] == 3
    assert main(["inspect", out, "--reference", src, "--json"]) == 0
    report = json.loads(capsys.readouterr().out,
                        parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))
    rows = {r["name"]: r for r in report["tensors"]}
    assert report["format"] == "gguf" and report["scheme"] == "MXFP4"
    assert rows["blk.0.w"]["scheme"] == "MXFP4" and rows["blk.0.w"]["bytes"] == 8 * 2 * 17
    # E2M1 (1 mantissa bit) with power-of-two scales on normal data: near 18 dB
    for name in ("blk.0.w", "blk.0.h", "blk.1.b"):
        assert 12 < rows[name]["sqnr_db"] < 25, rows[name]
        want = gguf.quants.dequantize(reference(tensors[name]), MXFP4).reshape(-1)
        err = float(np.abs(want - tensors[name].astype(F32).reshape(-1)).max())
        assert rows[name]["max_abs_err"] == pytest.approx(err, rel=1e-6)  # float64 sums
    assert rows["blk.0.norm"]["sqnr_db"] is None  # stored exactly
    assert main(["inspect", out, "--reference", src]) == 0
    text = capsys.readouterr().out
    assert text.startswith("gguf: MXFP4") and "blk.1.b" in text


def test_device_path_writes_the_same_file(tmp_path, rng, monkeypatch):
    """gq.export.gguf(device="cuda") runs the Triton kernel (the interpreter on torch CPU
    tensors here) and writes the bytes of the NumPy path."""
    torch, _, dev = _triton()
    from gpuquant.backends import _make
    from gpuquant.export import gguf_file

    src, _ = checkpoint(tmp_path, rng)
    used = []

    def select_for(a, backend=None):
        used.append("triton" if isinstance(a, torch.Tensor) else "numpy")
        return _make(used[-1])

    monkeypatch.setattr(gguf_file, "converter_for", lambda c: None if c == "cpu" else dev)
    monkeypatch.setattr(gguf_file, "select_for", select_for)
    gq.export.gguf(src, str(tmp_path / "gpu.gguf"), "mxfp4", device="cuda")
    assert used == ["triton"] * 3
    gq.export.gguf(src, str(tmp_path / "cpu.gguf"), "mxfp4", device="cpu")
    assert (tmp_path / "gpu.gguf").read_bytes() == (tmp_path / "cpu.gguf").read_bytes()


def test_cli_refusals_leave_nothing(tmp_path, rng, capsys):
    pytest.importorskip("torch")
    src, _ = checkpoint(tmp_path, rng, bad=True)
    out = tmp_path / "model.gguf"
    cmd = ["quantize", src, "-o", str(out), "--format", "gguf-mxfp4"]
    one_line_error(capsys, cmd, "non-finite", "blk.1.b")
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    for flags, words in ((["--workers", "2"], ["one file"]), (["--shard-size", "1MB"],
                         ["one file"]), (["--scheme", "int4"], ["--scheme", "MXFP4 E2M1"]),
                         (["--calibration", "mse"], ["--calibration"]),
                         (["--granularity", "group"], ["--granularity"]),
                         (["--scale-rule", "floor"], ["--scale-rule", "E8M0 floor rule"]),
                         (["--block-shape", "1,32"], ["--block-shape"])):
        one_line_error(capsys, cmd + flags, "--format gguf-mxfp4", *words)
    assert not out.exists()
    one_line_error(capsys, ["quantize", src, "-o", str(out)], "gguf-mxfp4", str(out))
    out.write_bytes(b"mine")
    src2 = str(tmp_path / "clean.safetensors")
    write_safetensors(src2, [("w", "F32", np.ones((2, 32), F32))])
    one_line_error(capsys, ["quantize", src2, "-o", str(out), "--format", "gguf-mxfp4"],
                   "--force")
    assert out.read_bytes() == b"mine"
    assert main(["quantize", src2, "-o", str(out), "--format", "gguf-mxfp4", "--force"]) == 0
    assert np.array_equal(np.asarray(gguf.GGUFReader(str(out)).tensors[0].data),
                          reference(np.ones((2, 32), F32)))
