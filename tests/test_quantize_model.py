"""gq.quantize_model and gq.export_model on tiny transformers models built from configs."""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import gpuquant as gq  # noqa: E402
from gpuquant.nn import QuantizedLinear  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")
G32 = gq.QuantConfig.int4_per_group(32)


def tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny_bert(seed=1):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    return BertModel(config).eval()


def linears(model):
    return {n: m for n, m in model.named_modules() if type(m) is torch.nn.Linear}


def test_rtn_replaces_every_linear_but_lm_head_and_reports():
    model = tiny_llama()
    before = {n: m.weight.detach().clone() for n, m in linears(model).items()}
    report = gq.quantize_model(model, G32)
    assert set(linears(model)) == {"lm_head"}
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    assert set(quantized) == set(before) - {"lm_head"} and len(quantized) == 14
    assert [r.name for r in report.layers] == list(quantized)
    for r in report.layers:
        want = gq.quantize(before[r.name], G32)
        assert torch.equal(quantized[r.name].qdata, want.data)
        assert r.scheme == G32.describe() and r.method == "rtn" and r.seconds >= 0
        assert r.sqnr_db == pytest.approx(gq.sqnr(before[r.name], want.dequantize()), rel=1e-9)
    assert "14 layer(s) by rtn" in str(report)
    with torch.no_grad():
        out = model(torch.tensor([[1, 5, 9, 42]])).logits
    assert out.shape == (1, 4, 100) and torch.isfinite(out).all()


def test_targets_and_ignore_patterns():
    model = tiny_llama()
    report = gq.quantize_model(model, G32, targets=r".*\.mlp\.", ignore=("re:.*down_proj",))
    assert sorted(r.name.split(".")[-1] for r in report.layers) == ["gate_proj", "gate_proj",
                                                                   "up_proj", "up_proj"]
    with pytest.raises(gq.QuantizationError, match="no nn.Linear"):
        gq.quantize_model(tiny_llama(), G32, targets="nothing")


def test_bad_arguments():
    with pytest.raises(gq.QuantizationError, match="method="):
        gq.quantize_model(tiny_bert(), G32, method="awq")
    with pytest.raises(gq.CalibrationRequiredError, match="calibration"):
        gq.quantize_model(tiny_bert(), G32, method="gptq")
    with pytest.raises(gq.QuantizationError, match="calibration= is for"):
        gq.quantize_model(tiny_bert(), G32, method="hqq", calibration=[torch.tensor([[1]])])
    with pytest.raises(gq.QuantizationError, match="QuantConfig"):
        gq.quantize_model(tiny_bert(), "int4")


def test_state_dict_round_trip_of_a_quantized_model():
    src = tiny_bert()
    gq.quantize_model(src, gq.QuantConfig.int4_per_group(32, symmetric=False), method="hqq")
    dst = tiny_bert(seed=5)
    gq.quantize_model(dst, gq.QuantConfig.int8_per_channel())  # other config and weights
    dst.load_state_dict(src.state_dict())
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    with torch.no_grad():
        assert torch.equal(dst(ids).last_hidden_state, src(ids).last_hidden_state)


def test_compiled_quantized_model_has_no_graph_break():
    model = tiny_bert()
    gq.quantize_model(model, G32)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9]])
    torch._dynamo.reset()
    try:
        explained = torch._dynamo.explain(model)(input_ids=ids)
        assert explained.graph_break_count == 0
    finally:
        torch._dynamo.reset()


def _load(folder):
    from transformers import AutoModel, CompressedTensorsConfig

    transformers.logging.set_verbosity_error()
    return AutoModel.from_pretrained(
        folder, quantization_config=CompressedTensorsConfig(dequantize=True)).eval()


@pytest.mark.parametrize("method,cfg", [
    ("hqq", gq.QuantConfig.int4_per_group(32, symmetric=False)),
    ("rtn", gq.QuantConfig.int4_per_group(32)),
    ("gptq", gq.QuantConfig.int8_per_channel()),
])
def test_export_model_loads_in_transformers_with_the_exact_weights(tmp_path, method, cfg):
    pytest.importorskip("compressed_tensors")
    model = tiny_bert()
    calibration = [{"input_ids": torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])}] \
        if method == "gptq" else None
    gq.quantize_model(model, cfg, method=method, calibration=calibration)
    stats = gq.export_model(model, str(tmp_path / "out"))
    assert stats["quantized"] == 13
    loaded = _load(str(tmp_path / "out"))
    weights = dict(loaded.named_modules())
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            assert torch.equal(weights[name].weight.data, module.dequantized_weight()), name
            assert torch.equal(weights[name].bias.data, module.bias.data), name
    ids = torch.tensor([[7, 3, 2, 9, 11]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).last_hidden_state, model(ids).last_hidden_state,
                              atol=1e-5)  # same weights; the matmul order may differ


def test_export_model_refuses_mixed_configs_and_plain_models(tmp_path):
    model = tiny_bert()
    gq.quantize_model(model, G32, targets=r".*attention")
    gq.quantize_model(model, gq.QuantConfig.int8_per_channel())
    with pytest.raises(gq.UnsupportedSchemeError, match="one config"):
        gq.export_model(model, str(tmp_path / "a"))
    with pytest.raises(gq.QuantizationError, match="no QuantizedLinear"):
        gq.export_model(tiny_bert(), str(tmp_path / "b"))
    assert not (tmp_path / "a").exists()


def test_lazy_exports_need_no_torch_at_import():
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import gpuquant as gq\n"
            "assert callable(gq.quantize_model) and callable(gq.export_model)\n"
            "try:\n    gq.nn\nexcept gq.BackendUnavailableError as e:\n    print('ok', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ok") and "pip install torch" in out.stdout


def test_export_model_of_a_causal_lm_keeps_lm_head_float(tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    model = tiny_llama()
    gq.quantize_model(model, gq.QuantConfig.int4_per_group(32, symmetric=False), method="hqq")
    gq.export_model(model, str(tmp_path / "out"))
    transformers.logging.set_verbosity_error()
    loaded = AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "out"), quantization_config=CompressedTensorsConfig(dequantize=True))
    got = dict(loaded.named_modules())
    assert torch.equal(got["lm_head"].weight.data, model.lm_head.weight.data)
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            assert torch.equal(got[name].weight.data, module.dequantized_weight()), name
    ids = torch.tensor([[1, 5, 9, 42]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, atol=1e-4)
