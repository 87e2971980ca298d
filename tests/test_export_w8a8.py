"""compressed-tensors W8A8 and W4AFP8 export (`--activations int8|fp8`): the config is the preset's,
the int8 codes are what compressed-tensors' IntQuantizationCompressor writes, and transformers
loads weights equal to gpuquant's dequantized ones."""

import json
import os

import numpy as np
import pytest
from conftest import one_line_error

from gpuquant.errors import UnsupportedSchemeError
from gpuquant.export.ctensors import PackOptions, int_weight, quantization_config, quantize_weight

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")

W8A8 = PackOptions(scheme="int8", granularity="channel", activations="int8")
W4AFP8 = PackOptions(scheme="int4", group_size=128, activations="fp8")
W4A8 = PackOptions(scheme="int4", group_size=128, activations="int8")


@pytest.mark.parametrize("preset,options", [("W8A8", W8A8), ("W4AFP8", W4AFP8),
                                            ("W4A8", W4A8)])
def test_config_is_the_presets_as_model_compressor_writes_it(preset, options):
    """Our quantization_config parses to the QuantizationConfig of compressed-tensors' preset,
    with the format its ModelCompressor infers for that preset (int-quantized)."""
    from compressed_tensors.compressors.format import infer_module_format
    from compressed_tensors.quantization import QuantizationConfig, preset_name_to_scheme

    scheme = preset_name_to_scheme(preset, ["Linear"])
    inferred = infer_module_format(torch.nn.Linear, scheme).value
    assert inferred == options.format == "int-quantized"
    scheme.format = inferred  # as infer_model_format sets it on every quantized module
    theirs = QuantizationConfig(config_groups={"group_0": scheme}, format=inferred,
                                quantization_status="compressed", ignore=["lm_head"])
    ours = quantization_config(options, ["lm_head"], ["Linear"])
    assert QuantizationConfig.model_validate(ours).model_dump() == theirs.model_dump()
    assert json.loads(json.dumps(ours)) == ours  # plain JSON, as config.json holds it


@pytest.mark.parametrize("options", [W8A8, W4AFP8,
                                     PackOptions(scheme="int4", group_size=32, activations="fp8")])
def test_int_codes_equal_the_compressor(options):
    """IntQuantizationCompressor.compress, given gpuquant's scale and gpuquant's dequantized
    weight, writes gpuquant's codes and scale (on the grid, so that compressed-tensors'
    x / scale and gpuquant's x * (1 / scale) pick the same code: the numerical contract
    rounds x * inv, and the two differ by one code where x / scale lands within an ulp of a
    half), and no zero point (symmetric)."""
    from compressed_tensors.compressors.naive_quantized.base import IntQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme

    rng = np.random.default_rng(3)
    w = (rng.standard_normal((24, 256)) * 0.05).astype(np.float32)
    w[0, :3] = [0.0, 1e-9, 2.0]
    ours = int_weight(w, options, "float32", "fc.weight")
    qt, _ = quantize_weight(w, options, "float32", "fc.weight")
    on_grid = qt.dequantize(dtype="float32")
    group = quantization_config(options, [], ["Linear"])["config_groups"]["group_0"]
    scheme = QuantizationScheme(targets=["Linear"], weights=group["weights"],
                                input_activations=group["input_activations"])
    state = {"weight": torch.from_numpy(on_grid),
             "weight_scale": torch.from_numpy(ours["weight_scale"])}
    theirs = IntQuantizationCompressor.compress(state, scheme)
    assert set(theirs) == {"weight", "weight_scale"}
    assert theirs["weight"].dtype == torch.int8
    assert np.array_equal(theirs["weight"].numpy(), ours["weight"])
    assert np.array_equal(theirs["weight_scale"].numpy(), ours["weight_scale"])
    assert ours["weight"].min() >= -(1 << (options.bits - 1))
    assert ours["weight"].max() <= (1 << (options.bits - 1)) - 1
    back = IntQuantizationCompressor.decompress(theirs, scheme)["weight"].numpy()
    assert np.array_equal(back, on_grid)


def _expected(w, options, dtype):
    """gpuquant's dequantized weight, in the model's dtype (scales rounded to it first)."""
    x = torch.from_numpy(w.view(np.int16)).view(torch.bfloat16) if w.dtype == np.uint16 \
        else torch.from_numpy(w)
    qt, _ = quantize_weight(x, options, dtype, "w")
    return qt.dequantize(dtype=dtype)


@pytest.mark.parametrize("argv,options,dtype", [
    (["--scheme", "int8", "--granularity", "channel", "--activations", "int8"], W8A8, "float32"),
    (["--scheme", "int4", "--group-size", "32", "--activations", "fp8"],
     PackOptions(scheme="int4", group_size=32, activations="fp8"), "float32"),
    (["--scheme", "int8", "--granularity", "channel", "--activations", "int8"], W8A8,
     "bfloat16")])
def test_llama_folder_loads_exact(tmp_path, argv, options, dtype):
    from export_models import dequantized_linears, dtype_tags, read_tensors, save_llama

    from gpuquant.cli import main

    src, out = save_llama(tmp_path / "llama", dtype=dtype, layers=1), str(tmp_path / "out")
    assert main(["export", src, "-o", out, "--quiet", *argv]) == 0
    with open(os.path.join(out, "config.json")) as f:
        qc = json.load(f)["quantization_config"]
    acts = qc["config_groups"]["group_0"]["input_activations"]
    assert qc["format"] == "int-quantized" and acts["dynamic"] is True
    assert acts["type"] == {"int8": "int", "fp8": "float"}[options.activations]
    tensors, tags, original = read_tensors(out), dtype_tags(out), read_tensors(src)
    linears = dequantized_linears(out)
    checked = 0
    for key, w in original.items():
        if key + "_scale" not in tensors:
            continue
        assert tags[key] == "I8" and key + "_zero_point" not in tensors
        x = w.astype(np.float32) if dtype == "float32" else \
            torch.from_numpy(w.view(np.int16)).view(torch.bfloat16)
        arrays = int_weight(x, options, dtype, key)
        assert np.array_equal(tensors[key], arrays["weight"])
        assert np.array_equal(tensors[key + "_scale"], arrays["weight_scale"])
        got = linears[key.removeprefix("model.").removesuffix(".weight")].weight.data
        assert got.dtype == getattr(torch, dtype)
        assert torch.equal(got, _expected(w, options, dtype)), key
        checked += 1
    assert checked == 7
    assert np.array_equal(tensors["lm_head.weight"], original["lm_head.weight"])


def test_activations_refusals(tmp_path, capsys):
    from export_models import save_llama

    with pytest.raises(UnsupportedSchemeError, match="activations='int4'"):
        PackOptions(activations="int4")
    with pytest.raises(UnsupportedSchemeError, match="symmetric"):
        PackOptions(activations="int8", symmetric=False)
    src = save_llama(tmp_path / "llama", layers=1)
    capsys.readouterr()
    for argv, words in ((["--activations", "int8", "--asymmetric"], "symmetric"),
                        (["--scheme", "fp8", "--activations", "fp8"], "leave out --activations"),
                        (["--format", "deepseek", "--method", "hqq"], "compressed-tensors")):
        one_line_error(capsys, ["export", src, "-o", str(tmp_path / "bad"), *argv], words)
        assert not (tmp_path / "bad").exists()


def test_hqq_and_export_model_write_int_quantized(tmp_path):
    """--method hqq --activations int8 (symmetric HQQ refits the scales) loads the HQQ
    modules' own dequantized weights; gq.export_model(activations="fp8") after round-to-nearest
    writes the streaming exporter's tensors."""
    from export_models import read_tensors
    from model_fixtures import save_tiny_bert
    from transformers import AutoModel, BertModel, CompressedTensorsConfig

    import gpuquant as gq
    from gpuquant.cli import main
    from gpuquant.nn import QuantizedLinear

    bert = save_tiny_bert(tmp_path / "bert")
    out = str(tmp_path / "hqq")
    assert main(["export", bert, "-o", out, "--method", "hqq", "--scheme", "int8",
                 "--granularity", "channel", "--activations", "int8", "--quiet"]) == 0
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["quantization_config"]["format"] == "int-quantized"
    model = BertModel.from_pretrained(bert).eval()
    gq.quantize_model(model, W8A8.quant_config(), method="hqq")
    want = {n: m.dequantized_weight() for n, m in model.named_modules()
            if isinstance(m, QuantizedLinear)}
    loaded = AutoModel.from_pretrained(out, quantization_config=CompressedTensorsConfig(
        dequantize=True))
    got = {n: m.weight.data for n, m in loaded.named_modules() if type(m) is torch.nn.Linear}
    assert len(want) == 13 and set(want) <= set(got)
    for name, weight in want.items():
        assert torch.equal(got[name], weight), name

    assert main(["export", bert, "-o", str(tmp_path / "streamed"), "--activations", "fp8",
                 "--group-size", "32", "--scale-dtype", "float32", "--quiet"]) == 0
    model = BertModel.from_pretrained(bert)
    gq.quantize_model(model, gq.QuantConfig.int4_per_group(32))
    gq.export_model(model, str(tmp_path / "memory"), activations="fp8")
    a, b = read_tensors(tmp_path / "streamed"), read_tensors(tmp_path / "memory")
    assert set(a) == set(b) and any(k.endswith(".weight_scale") for k in a)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
