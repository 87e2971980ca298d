"""DeepSeek-V3 FP8 block export (`gpuquant export --format deepseek`): weight (F8_E4M3) and
weight_scale_inv (F32, one per 128x128 block), quant_method fp8; transformers' FineGrainedFP8
reads it, and its dequantization equals gpuquant's bit for bit."""

import json
import os

import numpy as np
import pytest
from conftest import one_line_error

from gpuquant.cli import main
from gpuquant.config import QuantConfig
from gpuquant.errors import InvalidShapeError, UnsupportedSchemeError
from gpuquant.export.ctensors_float import pack_fp8_weight
from gpuquant.export.deepseek_fp8 import DeepSeekOptions, not_converted
from gpuquant.formats.reference import dequantize_float

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

MLP = r"model\.layers\.\d+\.mlp"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from block_models import save_llama_blocks

    root = tmp_path_factory.mktemp("deepseek")
    out = {"src": save_llama_blocks(root / "src"), "bf16": save_llama_blocks(root / "bf16",
                                                                              "bfloat16")}
    for name, src, argv in (("all", "src", []), ("mlp", "src", ["--targets", MLP]),
                            ("all_bf16", "bf16", [])):
        out[name] = str(root / name)
        assert main(["export", out[src], "-o", out[name], "--format", "deepseek", "--quiet",
                     *argv]) == 0
    return out


def _ours(w):
    """gpuquant's FP8 block arrays and float32 dequantized weight of a float32 weight."""
    arrays = pack_fp8_weight(w, "block", "w")
    cfg = QuantConfig.fp8_block()
    return arrays, dequantize_float(arrays["weight"], arrays["weight_scale"], None, cfg, w.shape)


def _weights(src):
    from export_models import read_tensors

    return {k: (v if v.dtype != np.uint16 else
                torch.from_numpy(v.view(np.int16)).view(torch.bfloat16).float().numpy())
            for k, v in read_tensors(src).items()}


def test_files_and_config(folders):
    from block_models import read_with_fp8

    with open(os.path.join(folders["all"], "config.json")) as f:
        qc = json.load(f)["quantization_config"]
    assert qc == {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                  "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]}
    tensors, tags = read_with_fp8(folders["all"])
    checked = 0
    for key, w in _weights(folders["src"]).items():
        if key + "_scale_inv" not in tensors:
            continue
        arrays, _ = _ours(w)
        assert tags[key] == "F8_E4M3" and tags[key + "_scale_inv"] == "F32"
        assert tensors[key + "_scale_inv"].shape == (w.shape[0] // 128, w.shape[1] // 128)
        assert np.array_equal(tensors[key], arrays["weight"])
        assert np.array_equal(tensors[key + "_scale_inv"], arrays["weight_scale"])
        checked += 1
    assert checked == 7 and tags["lm_head.weight"] == "F32"
    # a bfloat16 model keeps float32 scales (DeepSeek-V3's), computed from its bfloat16 weights
    tensors = read_with_fp8(folders["all_bf16"])[0]
    bf16 = _weights(folders["bf16"])
    down = "model.layers.0.mlp.down_proj.weight"
    assert np.array_equal(tensors[down + "_scale_inv"], _ours(bf16[down])[0]["weight_scale"])


def test_transformers_dequantize_op_equals_gpuquant(folders):
    """transformers' Fp8Dequantize (what its loader runs on CPU) on the file's tensors gives
    gpuquant's dequantized weight: float32, and rounded to a bfloat16 module's dtype."""
    from safetensors.torch import load_file
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    raw = load_file(os.path.join(folders["all"], "model.safetensors"))
    holder = torch.nn.Module()
    holder.fc = torch.nn.Linear(2, 2, dtype=torch.bfloat16)
    for key, w in _weights(folders["src"]).items():
        if key + "_scale_inv" not in raw:
            continue
        assert raw[key].dtype == torch.float8_e4m3fn
        pair = {"weight": raw[key], "weight_scale_inv": raw[key + "_scale_inv"]}
        got = Fp8Dequantize(None).convert(pair)["weight"]
        want = torch.from_numpy(_ours(w)[1])
        assert got.dtype == torch.float32 and torch.equal(got, want), key
        got16 = Fp8Dequantize(None).convert(pair, "fc.weight", holder)["fc.weight"]
        assert got16.dtype == torch.bfloat16 and torch.equal(got16, want.bfloat16()), key


def test_fp8_linear_replaces_exactly_the_quantized_modules(folders):
    """On a GPU transformers swaps Linear for FP8Linear except modules_to_not_convert: with
    --targets the regex keeps every other Linear in float, and each FP8Linear's
    weight_scale_inv has the file's shape."""
    from block_models import read_with_fp8
    from transformers import AutoConfig, FineGrainedFP8Config, LlamaForCausalLM
    from transformers.integrations.finegrained_fp8 import FP8Linear, replace_with_fp8_linear

    for name in ("all", "mlp"):
        config = AutoConfig.from_pretrained(folders[name])
        qc = FineGrainedFP8Config.from_dict(config.quantization_config)
        with torch.device("meta"):
            model = LlamaForCausalLM(config)
        replace_with_fp8_linear(model, qc.modules_to_not_convert, qc, pre_quantized=True)
        fp8 = {n: m for n, m in model.named_modules() if isinstance(m, FP8Linear)}
        tensors = read_with_fp8(folders[name])[0]
        quantized = {k.removesuffix(".weight_scale_inv") for k in tensors
                     if k.endswith("_scale_inv")}
        assert set(fp8) == quantized and len(quantized) == (7 if name == "all" else 3)
        for module, m in fp8.items():
            assert tuple(m.weight_scale_inv.shape) == tensors[module + ".weight_scale_inv"].shape


def test_transformers_loads_the_folder_exact(folders):
    """AutoModelForCausalLM.from_pretrained on CPU: transformers dequantizes (no FP8 kernels
    without a GPU) and every quantized weight equals gpuquant's; the others are the
    original's. Needs accelerate (transformers' FP8 quantizer requires it)."""
    pytest.importorskip("accelerate")
    from transformers import AutoModelForCausalLM

    for name in ("all", "mlp"):
        model = AutoModelForCausalLM.from_pretrained(folders[name]).eval()
        modules = dict(model.named_modules())
        checked = 0
        for key, w in _weights(folders["src"]).items():
            if not key.endswith("_proj.weight"):
                continue
            got = modules[key.removesuffix(".weight")].weight.data
            quantized = name == "all" or ".mlp." in key
            want = _ours(w)[1] if quantized else w
            assert got.dtype == torch.float32 and torch.equal(got, torch.from_numpy(want)), key
            checked += quantized
        assert checked == (7 if name == "all" else 3)


def test_not_converted_translates_ignore_and_targets():
    """compressed-tensors-style ignore names / re: patterns and --targets become patterns that
    transformers' own matcher (should_convert_module) reads as meant."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    out = not_converted(["lm_head", "re:.*k_proj"], ["re:" + MLP])
    assert out[:2] == ["lm_head", ".*k_proj"]
    for module, convert in (("lm_head", False), ("model.layers.0.self_attn.k_proj", False),
                            ("model.layers.0.self_attn.q_proj", False),
                            ("model.layers.3.mlp.up_proj", True),
                            ("model.layers.11.mlp.down_proj", True)):
        assert should_convert_module(module, out) is convert, module
    assert not_converted(["lm_head"], ["Linear"]) == ["lm_head"]


def test_refusals(tmp_path, capsys):
    from export_models import save_llama

    with pytest.raises(UnsupportedSchemeError, match="granularity='channel'"):
        DeepSeekOptions(granularity="channel")
    with pytest.raises(InvalidShapeError, match="not whole 128x128 blocks"):
        DeepSeekOptions().check_shape("w", (64, 128))
    src = save_llama(tmp_path / "small", layers=1)  # hidden 64: not whole blocks
    capsys.readouterr()
    for argv, words in ((["--format", "deepseek"], "not whole 128x128 blocks"),
                        (["--format", "deepseek", "--scheme", "int4"], "--format deepseek"),
                        (["--format", "deepseek", "--granularity", "channel"], "128x128"),
                        (["--format", "deepseek", "--scale-dtype", "bfloat16"], "float32"),
                        (["--format", "deepseek", "--group-size", "32"], "--group-size")):
        one_line_error(capsys, ["export", src, "-o", str(tmp_path / "bad"), *argv], words)
        assert not (tmp_path / "bad").exists()
