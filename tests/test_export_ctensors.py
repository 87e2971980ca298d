"""compressed-tensors export: tiny Llama and BERT models exported, then loaded by transformers.

Every Linear weight the loader produces must equal gpuquant's own dequantized
weight bit for bit, and the model's hidden states must equal those of the
original model holding those weights.
"""

import json
import os

import numpy as np
import pytest
from export_models import dtype_tags, read_tensors, save_bert, save_llama

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

import gpuquant as gq  # noqa: E402
from gpuquant.export.ctensors import PackOptions, quantize_weight  # noqa: E402

# transformers notes that CompressedTensorsConfig(dequantize=True) overrides the file's config
pytestmark = pytest.mark.filterwarnings("ignore:You passed `quantization_config`:UserWarning")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"llama": save_llama(root / "llama"), "bert": save_bert(root / "bert"),
            "llama_sharded": save_llama(root / "llama_sh", shard="60KB"),
            "llama_bf16": save_llama(root / "llama_bf16", dtype="bfloat16", layers=1)}


def load(folder, dequantize):
    from transformers import AutoModel, CompressedTensorsConfig

    kw = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    transformers.logging.set_verbosity_error()
    return AutoModel.from_pretrained(folder, **kw).eval()


def expected_weights(src, options, scale_dtype, dtype="float32"):
    """{module name (as in AutoModel): gpuquant's dequantized weight} of every exported Linear."""
    original = read_tensors(src)
    out = {}
    for key, raw in original.items():
        if key.endswith("_proj.weight") or (".dense.weight" in key) or key.endswith(
                ("query.weight", "key.weight", "value.weight")):
            w = torch.from_numpy(raw.astype(np.float32)) if raw.dtype != np.uint16 else \
                torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
            qt, _ = quantize_weight(w, options, scale_dtype, key)
            out[key.removeprefix("model.").removesuffix(".weight")] = qt.dequantize(dtype=dtype)
    return out


def reference_hidden(src, weights, ids):
    model = load(src, dequantize=False)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name in weights:
                module.weight.copy_(weights[name])
        return model(input_ids=ids).last_hidden_state


def check_loaded(model, weights):
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(weights) <= set(linears) and weights
    for name, want in weights.items():
        assert torch.equal(linears[name].weight.data, want), name


def test_llama_int4_group_loads_bit_exact(models, tmp_path):
    out = str(tmp_path / "out")
    options = PackOptions(scheme="int4", group_size=32)
    stats = gq.export.compressed_tensors(models["llama"], out, options, device="cpu")
    assert stats["quantized"] == 14 and stats["scale_dtype"] == "float32"
    weights = expected_weights(models["llama"], options, "float32")
    ids = torch.tensor([[1, 5, 9, 42, 77, 3]])
    want = reference_hidden(models["llama"], weights, ids)
    deq = load(out, dequantize=True)
    check_loaded(deq, weights)
    compressed = load(out, dequantize=False)  # symmetric: the default load works too
    with torch.no_grad():
        assert torch.equal(deq(input_ids=ids).last_hidden_state, want)
        assert torch.equal(compressed(input_ids=ids).last_hidden_state, want)
    files = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "tokenizer.json", "model.safetensors"} <= files
    tensors, original = read_tensors(out), read_tensors(models["llama"])
    assert np.array_equal(tensors["lm_head.weight"], original["lm_head.weight"])  # ignored
    assert np.array_equal(tensors["model.embed_tokens.weight"],
                          original["model.embed_tokens.weight"])
    assert tensors["model.layers.0.mlp.down_proj.weight_packed"].shape == (64, 16)
    assert tensors["model.layers.0.mlp.down_proj.weight_scale"].shape == (64, 4)
    assert tensors["model.layers.0.mlp.down_proj.weight_shape"].tolist() == [64, 128]


def test_bert_asymmetric_int8_channel_keeps_biases_and_norms(models, tmp_path):
    out = str(tmp_path / "out")
    options = PackOptions(scheme="int8", granularity="channel", symmetric=False)
    gq.export.compressed_tensors(models["bert"], out, options, device="cpu")
    weights = expected_weights(models["bert"], options, "float32")
    assert len(weights) == 13  # 6 per layer and the pooler
    ids = torch.tensor([[2, 7, 11, 60, 99]])
    model = load(out, dequantize=True)
    check_loaded(model, weights)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).last_hidden_state,
                           reference_hidden(models["bert"], weights, ids))
    tensors, original = read_tensors(out), read_tensors(models["bert"])
    kept = [k for k in original if not k.endswith(".weight") or "embeddings" in k
            or "LayerNorm" in k]
    assert any(k.endswith(".bias") for k in kept)
    for key in kept:
        assert np.array_equal(tensors[key], original[key]), key
    assert tensors["pooler.dense.weight_zero_point"].shape == (16, 1)  # 64 rows / 4 a word


def test_sharded_checkpoint_keeps_shards_and_rewrites_index(models, tmp_path):
    out, single = str(tmp_path / "out"), str(tmp_path / "single")
    options = PackOptions(scheme="int4", group_size=64, symmetric=False)
    gq.export.compressed_tensors(models["llama_sharded"], out, options, device="cpu")
    gq.export.compressed_tensors(models["llama"], single, options, device="cpu")
    shards = sorted(n for n in os.listdir(models["llama_sharded"]) if n.endswith(".safetensors"))
    assert len(shards) > 2
    assert sorted(n for n in os.listdir(out) if n.endswith(".safetensors")) == shards
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)
    tensors = read_tensors(out)
    assert set(index["weight_map"]) == set(tensors)
    assert index["metadata"]["total_size"] == sum(
        os.path.getsize(os.path.join(out, s)) for s in shards)
    for key, shard in index["weight_map"].items():
        assert key in read_tensors_of(os.path.join(out, shard))
    one = read_tensors(single)
    assert set(one) == set(tensors)
    for key in one:
        assert np.array_equal(one[key], tensors[key]), key
    check_loaded(load(out, dequantize=True), expected_weights(models["llama"], options, "float32"))


def read_tensors_of(path):
    from gpuquant.checkpoint.files import SafetensorsFile

    with SafetensorsFile(path) as f:
        return set(f.keys())


@pytest.mark.parametrize("scale_dtype", [None, "float32"])
def test_bf16_model_scales(models, tmp_path, scale_dtype):
    """Default: bfloat16 scales, codes chosen against the rounded scale. float32: kept as is;
    transformers' dequantize=True load uses it before rounding the weight to bfloat16."""
    out = str(tmp_path / "out")
    options = PackOptions(scheme="int4", group_size=32, scale_dtype=scale_dtype)
    stats = gq.export.compressed_tensors(models["llama_bf16"], out, options, device="cpu")
    stored = scale_dtype or "bfloat16"
    assert stats["scale_dtype"] == stored
    assert dtype_tags(out)["model.layers.0.mlp.up_proj.weight_scale"] == \
        {"bfloat16": "BF16", "float32": "F32"}[stored]
    weights = expected_weights(models["llama_bf16"], options, stored, dtype="bfloat16")
    check_loaded(load(out, dequantize=True), weights)
    if scale_dtype is None:  # the rounding of the scale changed some codes: it mattered
        w = torch.from_numpy(read_tensors(models["llama_bf16"])["model.layers.0.mlp.up_proj.weight"]
                             .view(np.int16)).view(torch.bfloat16)
        rounded, _ = quantize_weight(w, options, "bfloat16")
        exact, _ = quantize_weight(w, options, "float32")
        assert not torch.equal(rounded.data, exact.data)


def test_quantization_config_is_what_compressed_tensors_accepts(models, tmp_path):
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig

    for i, options in enumerate([PackOptions(group_size=32),
                                 PackOptions(scheme="int8", granularity="channel",
                                             symmetric=False)]):
        out = str(tmp_path / f"out{i}")
        gq.export.compressed_tensors(models["llama"], out, options, device="cpu")
        with open(os.path.join(out, "config.json")) as f:
            qc = json.load(f)["quantization_config"]
        parsed = QuantizationConfig.model_validate(qc)
        args = parsed.config_groups["group_0"].weights
        assert (args.num_bits, args.symmetric, str(getattr(args.strategy, "value", args.strategy))) == \
            (options.bits, options.symmetric, options.granularity)
        weights = qc["config_groups"]["group_0"]["weights"]
        QuantizationArgs.model_validate(weights)
        with pytest.raises(ValueError):  # the check is strict: an unknown key fails
            QuantizationArgs.model_validate({**weights, "gpuquant_calibration": "mse"})


def test_calibration_and_ignore_options(models, tmp_path):
    from gpuquant.checkpoint.files import SafetensorsFile
    from gpuquant.export.inspect import dequantize_packed

    out = str(tmp_path / "out")
    options = PackOptions(scheme="int4", group_size=32, calibration="mse",
                          ignore=("lm_head", "re:.*down_proj"))
    gq.export.compressed_tensors(models["llama"], out, options, device="cpu")
    tensors = read_tensors(out)
    assert "model.layers.1.mlp.down_proj.weight" in tensors
    assert "model.layers.1.mlp.up_proj.weight_packed" in tensors
    w = read_tensors(models["llama"])["model.layers.1.mlp.up_proj.weight"]
    qt, _ = quantize_weight(w, options, "float32")
    with SafetensorsFile(os.path.join(out, "model.safetensors")) as f:
        got = dequantize_packed(f, "model.layers.1.mlp.up_proj.weight", 4, True)
    assert np.array_equal(got, qt.dequantize(dtype="float32"))
    minmax, _ = quantize_weight(w, PackOptions(scheme="int4", group_size=32), "float32")
    assert not np.array_equal(minmax.scale, qt.scale)  # mse chose other scales


def test_round_scale_matches_torch_and_refuses_overflow():
    from gpuquant.export.ctensors import round_scale

    scale = np.array([1e-3, 0.1234567, 3.0e4, 1.0 / 3], np.float32)
    for dtype, torch_dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        stored, values = round_scale(scale, dtype, "w")
        want = torch.from_numpy(scale).to(torch_dtype).float().numpy()
        assert np.array_equal(values, want)
        assert not np.array_equal(values, scale)  # the rounding is real
    with pytest.raises(gq.QuantizationError, match="--scale-dtype float32"):
        round_scale(np.array([1.0, 7e4], np.float32), "float16", "w")
    with pytest.raises(gq.QuantizationError, match="--scale-dtype float32"):
        round_scale(np.array([1e-9], np.float32), "float16", "w")  # rounds to 0
