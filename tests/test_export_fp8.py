"""FP8 float-quantized export: the bytes equal compressed-tensors' own FloatQuantizationCompressor
on the same weights and scales, and its dequantization equals gpuquant's."""

import json
import os

import numpy as np
import pytest

from gpuquant.errors import InvalidShapeError, UnsupportedSchemeError
from gpuquant.export.ctensors_float import fp8_quantization_config, pack_fp8_weight

torch = pytest.importorskip("torch")
ct = pytest.importorskip("compressed_tensors")
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")


def _scheme(granularity):
    from compressed_tensors.quantization import QuantizationScheme

    group = fp8_quantization_config(granularity, [], ["Linear"])["config_groups"]["group_0"]
    return QuantizationScheme(targets=group["targets"], weights=group["weights"],
                              input_activations=group["input_activations"])


def _weight(rows, cols, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
    w[0, :3] = [0.0, -1e-9, 3.0]  # a zero, a tiny value, an outlier
    w[-1] = 0.0  # an all-zero row: scale float32 eps
    return w


@pytest.mark.parametrize("granularity,shape", [("tensor", (8, 40)), ("channel", (8, 40)),
                                               ("block", (130, 256)), ("block", (64, 128))])
def test_fp8_bytes_equal_compressed_tensors(granularity, shape):
    from compressed_tensors.compressors.naive_quantized.base import FloatQuantizationCompressor

    w = _weight(*shape)
    ours = pack_fp8_weight(w, granularity)
    state = {"weight": torch.from_numpy(w), "weight_scale": torch.from_numpy(ours["weight_scale"])}
    theirs = FloatQuantizationCompressor.compress(state, _scheme(granularity))
    assert theirs["weight"].dtype == torch.float8_e4m3fn
    assert np.array_equal(theirs["weight"].view(torch.uint8).numpy(), ours["weight"])
    assert np.array_equal(theirs["weight_scale"].numpy(), ours["weight_scale"])
    back = FloatQuantizationCompressor.decompress(
        {"weight": theirs["weight"], "weight_scale": theirs["weight_scale"]}, _scheme(granularity))
    codes = torch.from_numpy(ours["weight"]).view(torch.float8_e4m3fn).float().numpy()
    bn, bk = (128, 128) if granularity == "block" else (1, shape[1])
    s = ours["weight_scale"].reshape(-1, ours["weight_scale"].shape[-1])
    full = np.repeat(np.repeat(s, bn if granularity == "block" else shape[0] // s.shape[0], 0),
                     bk if granularity != "tensor" else shape[1], 1)[: shape[0], : shape[1]]
    assert np.array_equal(back["weight"].numpy(), (codes * full).astype(np.float32))


def test_fp8_scale_shapes_and_config():
    w = _weight(130, 256)
    assert pack_fp8_weight(w, "tensor")["weight_scale"].shape == (1,)
    assert pack_fp8_weight(w, "channel")["weight_scale"].shape == (130, 1)
    assert pack_fp8_weight(w, "block")["weight_scale"].shape == (2, 2)
    assert pack_fp8_weight(w, "channel")["weight_scale"][-1, 0] == np.finfo(np.float32).eps
    qc = fp8_quantization_config("block", ["lm_head"], ["Linear"])
    assert qc["format"] == "float-quantized"
    assert qc["config_groups"]["group_0"]["weights"]["block_structure"] == [128, 128]
    acts = fp8_quantization_config("channel", [], ["Linear"])["config_groups"]["group_0"]
    assert acts["input_activations"] == {"num_bits": 8, "type": "float", "symmetric": True,
                                         "strategy": "token", "dynamic": True}


def test_fp8_bad_input_names_the_argument():
    with pytest.raises(UnsupportedSchemeError, match="granularity='group'"):
        pack_fp8_weight(_weight(4, 32), "group")
    with pytest.raises(InvalidShapeError, match="block width 128"):
        pack_fp8_weight(_weight(4, 96), "block")
    with pytest.raises(InvalidShapeError, match="2-D"):
        pack_fp8_weight(np.zeros(8, np.float32), "tensor")


def _read_torch(folder, fp8="model.layers.0.mlp.down_proj.weight"):
    """Every tensor of an export, as NumPy (FP8 as its uint8 bit patterns), read by safetensors."""
    from safetensors.torch import load_file

    raw = load_file(os.path.join(folder, "model.safetensors"))
    assert raw[fp8].dtype == torch.float8_e4m3fn
    return {k: (v.view(torch.uint8) if v.dtype == torch.float8_e4m3fn else v).numpy()
            for k, v in raw.items()}


def _dequantized(arrays, granularity, shape):
    """code * scale in float32, the scale broadcast over its unit."""
    codes = torch.from_numpy(arrays["weight"]).view(torch.float8_e4m3fn).float()
    s = torch.from_numpy(arrays["weight_scale"].astype(np.float32))
    if granularity == "block":
        s = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[: shape[0], : shape[1]]
    return codes * s


@pytest.mark.parametrize("granularity,targets", [("channel", None), ("tensor", None),
                                                 ("block", r"model\.layers\.\d+\.mlp\.down_proj")])
def test_llama_fp8_folder_loads_exact(tmp_path, granularity, targets):
    from export_models import dequantized_linears, read_tensors, save_llama

    import gpuquant as gq
    from gpuquant.export.ctensors_float import FloatOptions

    src, out = save_llama(tmp_path / "llama"), str(tmp_path / "out")
    stats = gq.export.compressed_tensors(src, out, FloatOptions(granularity=granularity,
                                                                targets=targets), device="cpu")
    assert stats["quantized"] == (2 if targets else 14)
    tensors, original = _read_torch(out), read_tensors(src)
    with open(os.path.join(out, "config.json")) as f:
        qc = json.load(f)["quantization_config"]
    assert qc["format"] == "float-quantized"
    assert qc["config_groups"]["group_0"]["weights"]["strategy"] == granularity
    linears = dequantized_linears(out)
    checked = 0
    for key, w in original.items():
        if key + "_scale" not in tensors:
            continue
        arrays = pack_fp8_weight(w, granularity, key)
        assert np.array_equal(tensors[key], arrays["weight"])
        assert np.array_equal(tensors[key + "_scale"], arrays["weight_scale"])
        want = _dequantized(arrays, granularity, w.shape)
        assert torch.equal(linears[key.removeprefix("model.").removesuffix(".weight")].weight.data,
                           want), key
        checked += 1
    assert checked == stats["quantized"]
    assert np.array_equal(tensors["lm_head.weight"], original["lm_head.weight"])


def test_cli_export_fp8_and_its_refusals(tmp_path, capsys):
    from export_models import save_llama

    from gpuquant.cli import main

    src, out = save_llama(tmp_path / "llama", layers=1), tmp_path / "out"
    assert main(["export", src, "-o", str(out), "--scheme", "fp8", "--quiet"]) == 0
    with open(out / "config.json") as f:
        group = json.load(f)["quantization_config"]["config_groups"]["group_0"]
    assert group["weights"]["strategy"] == "channel"  # fp8's default granularity
    assert group["input_activations"]["strategy"] == "token"
    for argv, words in ((["--scheme", "fp8", "--group-size", "64"], "leave out --group-size"),
                        (["--scheme", "fp8", "--granularity", "group"], "granularity='group'"),
                        (["--scheme", "int4", "--granularity", "block"], "granularity='block'")):
        assert main(["export", src, "-o", str(tmp_path / "bad"), *argv]) != 0
        assert words in capsys.readouterr().err, argv
        assert not (tmp_path / "bad").exists()


def test_nvfp4_bytes_equal_compressed_tensors():
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme

    from gpuquant.export.ctensors_fp4 import nvfp4_quantization_config, pack_nvfp4_weight

    w = _weight(8, 64)
    ours = pack_nvfp4_weight(w)
    group = nvfp4_quantization_config([], ["Linear"])["config_groups"]["group_0"]
    scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])
    scale = torch.from_numpy(ours["weight_scale"]).view(torch.float8_e4m3fn).float()
    state = {"weight": torch.from_numpy(w), "weight_scale": scale,
             "weight_global_scale": torch.from_numpy(ours["weight_global_scale"])}
    theirs = NVFP4PackedCompressor.compress(state, scheme)
    assert np.array_equal(theirs["weight_packed"].numpy(), ours["weight_packed"])
    assert theirs["weight_scale"].dtype == torch.float8_e4m3fn
    assert np.array_equal(theirs["weight_scale"].view(torch.uint8).numpy(), ours["weight_scale"])
    assert np.array_equal(theirs["weight_global_scale"].numpy(), ours["weight_global_scale"])


def test_llama_mxfp4_folder_loads(tmp_path):
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from export_models import dequantized_linears, read_tensors, save_llama

    from gpuquant.cli import main
    from gpuquant.export.ctensors_fp4 import mxfp4_quantization_config, pack_mxfp4_weight

    src, out = save_llama(tmp_path / "llama", layers=1), str(tmp_path / "out")
    assert main(["export", src, "-o", out, "--scheme", "mxfp4", "--quiet"]) == 0
    from safetensors.numpy import load_file

    tensors, original = load_file(os.path.join(out, "model.safetensors")), read_tensors(src)
    group = mxfp4_quantization_config([], ["Linear"])["config_groups"]["group_0"]
    scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])
    linears = dequantized_linears(out)
    checked = 0
    for key, w in original.items():
        if key + "_packed" not in tensors:
            continue
        a = pack_mxfp4_weight(w, key)
        assert np.array_equal(tensors[key + "_packed"], a["weight_packed"])
        assert np.array_equal(tensors[key + "_scale"], a["weight_scale"])
        state = {"weight" + k.removeprefix("weight"): torch.from_numpy(v) for k, v in a.items()}
        want = MXFP4PackedCompressor.decompress(state, scheme)["weight"].float()
        got = linears[key.removeprefix("model.").removesuffix(".weight")].weight.data
        assert torch.equal(got, want), key
        checked += 1
    assert checked == 7


def test_llama_nvfp4_folder_loads_exact(tmp_path):
    from compressed_tensors.compressors.nvfp4.base import NVFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from export_models import dequantized_linears, read_tensors, save_llama

    import gpuquant as gq
    from gpuquant.config import QuantConfig
    from gpuquant.export.ctensors_float import FloatOptions
    from gpuquant.export.ctensors_fp4 import nvfp4_quantization_config, pack_nvfp4_weight
    from gpuquant.formats.reference import dequantize_float

    group = nvfp4_quantization_config([], ["Linear"])["config_groups"]["group_0"]
    scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])

    src, out = save_llama(tmp_path / "llama", layers=1), str(tmp_path / "out")
    stats = gq.export.compressed_tensors(src, out, FloatOptions(scheme="nvfp4"), device="cpu")
    assert stats["quantized"] == 7
    tensors, original = _read_torch(out, "model.layers.0.mlp.down_proj.weight_scale"), \
        read_tensors(src)
    linears = dequantized_linears(out)
    for key, w in original.items():
        if key + "_packed" not in tensors:
            continue
        a = pack_nvfp4_weight(w, key)
        assert np.array_equal(tensors[key + "_packed"], a["weight_packed"])
        assert np.array_equal(tensors[key + "_scale"], a["weight_scale"])
        # compressed-tensors' loader dequantizes NVFP4 in bfloat16 (unpack_fp4_from_uint8's
        # dtype), so the loaded weight is its decompression of these bytes, within bfloat16
        # rounding of gpuquant's float32 dequantization
        state = {k.removeprefix("weight"): torch.from_numpy(v) for k, v in a.items()}
        state = {"weight" + k: v for k, v in state.items()}
        state["weight_scale"] = state["weight_scale"].view(torch.float8_e4m3fn)
        want = NVFP4PackedCompressor.decompress(state, scheme)["weight"].float().numpy()
        got = linears[key.removeprefix("model.").removesuffix(".weight")].weight.data.numpy()
        ours = dequantize_float(a["weight_packed"], a["weight_scale"], a["weight_global_scale"][0],
                                QuantConfig.nvfp4(), w.shape)
        assert np.allclose(got, ours, rtol=2 ** -7, atol=0), key  # bfloat16's 8-bit mantissa
        assert np.array_equal(got, want), key


def test_mxfp4_bytes_equal_compressed_tensors():
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.quantization import QuantizationScheme

    from gpuquant.export.ctensors_fp4 import mxfp4_quantization_config, pack_mxfp4_weight

    w = _weight(8, 64)
    ours = pack_mxfp4_weight(w)
    group = mxfp4_quantization_config([], ["Linear"])["config_groups"]["group_0"]
    scheme = QuantizationScheme(targets=group["targets"], weights=group["weights"])
    scale = torch.exp2(torch.from_numpy(ours["weight_scale"].astype(np.float32)) - 127)
    theirs = MXFP4PackedCompressor.compress({"weight": torch.from_numpy(w), "weight_scale": scale},
                                            scheme)
    assert np.array_equal(theirs["weight_packed"].numpy(), ours["weight_packed"])
    assert np.array_equal(theirs["weight_scale"].numpy(), ours["weight_scale"])
