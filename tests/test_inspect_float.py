"""`gpuquant inspect --reference` of the float and int-quantized folders: compressed-tensors
float-quantized FP8 (tensor, channel, block), nvfp4-pack-quantized, mxfp4-pack-quantized,
int-quantized (W8A8, W4AFP8) and DeepSeek FP8. The decoded weights equal an independent decoding
of the files (torch's float8 cast, an E2M1 table), and the SQNR rows are computed from them."""

import json
import math

import numpy as np
import pytest

from gpuquant.checkpoint.files import write_safetensors
from gpuquant.cli import main
from gpuquant.export.inspect import inspect_export
from gpuquant.export.inspect_folders import folder_config, folder_tensors

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

CASES = {"fp8_channel": ["--scheme", "fp8"],
         "fp8_tensor": ["--scheme", "fp8", "--granularity", "tensor"],
         "fp8_block": ["--scheme", "fp8", "--granularity", "block"],
         "nvfp4": ["--scheme", "nvfp4"], "mxfp4": ["--scheme", "mxfp4"],
         "w8a8": ["--scheme", "int8", "--granularity", "channel", "--activations", "int8"],
         "w4afp8": ["--scheme", "int4", "--activations", "fp8"],
         "deepseek": ["--format", "deepseek"]}
E2M1 = torch.tensor([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from block_models import save_llama_blocks

    root = tmp_path_factory.mktemp("inspect_float")
    out = {"src": save_llama_blocks(root / "src")}
    for name, argv in CASES.items():
        out[name] = str(root / name)
        assert main(["export", out["src"], "-o", out[name], "--quiet", *argv]) == 0
    return out


def _blocks(scale, rows, cols):
    """A per-unit scale [R, C] spread over [rows, cols] (ragged last blocks cut)."""
    s = torch.as_tensor(scale).float()
    s = s.reshape(1, 1) if s.numel() == 1 else s.reshape(s.shape[0], -1)
    bn, bk = math.ceil(rows / s.shape[0]), math.ceil(cols / s.shape[1])
    return s.repeat_interleave(bn, 0).repeat_interleave(bk, 1)[:rows, :cols]


def _fp8(bits):
    return torch.from_numpy(np.ascontiguousarray(bits)).view(torch.float8_e4m3fn).float()


def _expected(kind, t, base, shape):
    """An independent decoding of one weight's tensors ``t`` (FP8 as uint8 bits)."""
    rows, cols = shape
    if kind.startswith("fp8") or kind == "deepseek":
        scale = t[base + ("_scale_inv" if kind == "deepseek" else "_scale")]
        return _fp8(t[base]) * _blocks(scale, rows, cols)
    if kind in ("w8a8", "w4afp8"):
        return torch.from_numpy(t[base].astype(np.float32)) * _blocks(t[base + "_scale"], rows,
                                                                      cols)
    packed = torch.from_numpy(t[base + "_packed"]).long()
    q = torch.stack([E2M1[packed & 15], E2M1[packed >> 4]], -1).reshape(rows, cols)
    if kind == "nvfp4":
        step = _fp8(t[base + "_scale"]) / torch.from_numpy(t[base + "_global_scale"])
    else:
        step = torch.exp2(torch.from_numpy(t[base + "_scale"]).float() - 127)
    return q * _blocks(step, rows, cols)


@pytest.mark.parametrize("kind", list(CASES))
def test_decoded_weights_and_sqnr(folders, kind):
    from block_models import read_with_fp8

    tensors, _ = read_with_fp8(folders[kind])
    original, _ = read_with_fp8(folders["src"])
    qc = folder_config(folders[kind])
    decoded = {row["name"]: (row, values()) for row, values in folder_tensors(folders[kind], qc)
               if values is not None}
    assert len(decoded) == 7, sorted(decoded)
    report = inspect_export(folders[kind], folders["src"])
    rows = {r["name"]: r for r in report["tensors"]}
    assert set(rows) == set(decoded) | {"lm_head.weight", "model.embed_tokens.weight",
                                        "model.norm.weight",
                                        "model.layers.0.input_layernorm.weight",
                                        "model.layers.0.post_attention_layernorm.weight"}
    for name, (row, y) in decoded.items():
        want = _expected(kind, tensors, name, row["shape"]).numpy()
        assert y.dtype == np.float32 and np.array_equal(y, want), name
        ref = original[name].astype(np.float64)
        diff = ref - want
        assert rows[name]["max_abs_err"] == np.abs(diff).max()
        sqnr = 10 * math.log10((ref * ref).sum() / (diff * diff).sum())
        assert rows[name]["sqnr_db"] == pytest.approx(sqnr, rel=1e-12)  # summation order
        assert rows[name]["original_bytes"] == original[name].nbytes
    assert report["sqnr_min_db"] == min(r["sqnr_db"] for r in rows.values() if "sqnr_db" in r)


def test_scheme_names(folders):
    schemes = {kind: inspect_export(folders[kind])["scheme"] for kind in CASES}
    assert schemes["fp8_block"].startswith("fp8 block128x128 (activations float8 group")
    assert schemes["fp8_tensor"].startswith("fp8 tensor (activations float8 token")
    assert schemes["w8a8"] == "int8 sym channel (activations int8 token dynamic)"
    assert schemes["w4afp8"] == "int4 sym group128 (activations float8 token dynamic)"
    assert schemes["deepseek"] == "fp8 block128x128"
    assert inspect_export(folders["deepseek"])["format"] == "DeepSeek FP8 (quant_method fp8)"
    assert inspect_export(folders["nvfp4"])["format"] == "compressed-tensors nvfp4-pack-quantized"


def test_ragged_fp8_blocks(tmp_path):
    """FP8 blocks over 64 rows (one ragged 128-row block): decoded with the scale cut."""
    from block_models import read_with_fp8
    from export_models import save_llama

    src, out = save_llama(tmp_path / "llama", layers=1), str(tmp_path / "out")
    assert main(["export", src, "-o", out, "--quiet", "--scheme", "fp8", "--granularity", "block",
                 "--targets", r"model\.layers\.\d+\.mlp\.down_proj"]) == 0
    tensors, _ = read_with_fp8(out)
    base = "model.layers.0.mlp.down_proj.weight"
    assert tensors[base + "_scale"].shape == (1, 1)
    (row, y), = [(r, v()) for r, v in folder_tensors(out, folder_config(out)) if v]
    assert row["name"] == base and row["shape"] == [64, 128]
    assert np.array_equal(y, _expected("fp8_block", tensors, base, (64, 128)).numpy())


def _crafted(tmp_path, qc, tensors):
    folder = tmp_path / "crafted"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"quantization_config": qc}))
    write_safetensors(folder / "model.safetensors", tensors)
    return str(folder)


@pytest.mark.parametrize("case", ["format", "block", "scale_shape", "strategy"])
def test_crafted_folders_are_one_line(tmp_path, capsys, case):
    w = np.zeros((4, 32), np.uint8)
    fp8 = {"quant_method": "compressed-tensors", "format": "float-quantized",
           "config_groups": {"g": {"weights": {"num_bits": 8, "type": "float",
                                               "strategy": "channel"}}}}
    qc, tensors = {
        "format": ({**fp8, "format": "marlin-24"}, [("fc.weight", "F8_E4M3", w)]),
        "block": ({"quant_method": "fp8", "weight_block_size": "128"},
                  [("fc.weight", "F8_E4M3", w), ("fc.weight_scale_inv", "F32", np.ones((1, 1),
                                                                                  np.float32))]),
        "scale_shape": (fp8, [("fc.weight", "F8_E4M3", w),
                              ("fc.weight_scale", "F32", np.ones((3, 1), np.float32))]),
        "strategy": ({**fp8, "config_groups": {"g": {"weights": {"strategy": "group"}}}},
                     [("fc.weight", "F8_E4M3", w), ("fc.weight_scale", "F32",
                                               np.ones((4, 1), np.float32))])}[case]
    folder = _crafted(tmp_path, qc, tensors)
    assert main(["inspect", folder]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpuquant: error:") and err.count("\n") == 1, err
    assert folder in err and "internal" not in err
