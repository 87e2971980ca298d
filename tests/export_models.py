"""Tiny random Hugging Face models for the export tests: built from configs, never downloaded."""

from __future__ import annotations

import json
import os

import numpy as np


def save_llama(path, dtype="float32", shard: str | None = None, layers: int = 2) -> str:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, dtype=dtype)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, safe_serialization=True, **kw)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump({"version": "1.0", "model": {"type": "test"}}, f)
    return str(path)


def save_bert(path) -> str:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    config = BertConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
    model = BertModel(config)
    with torch.no_grad():  # non-zero biases, so that keeping them is checked
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.02)
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


def _each_tensor(folder, value) -> dict:
    """name -> value(file, name) over every safetensors file of a folder."""
    from gpuquant.checkpoint.files import SafetensorsFile

    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with SafetensorsFile(os.path.join(folder, name)) as f:
                out.update({k: value(f, k) for k in f.keys()})
    return out


def read_tensors(folder) -> dict[str, np.ndarray]:
    """Every tensor of a folder's safetensors files, raw (bfloat16 as uint16 bits)."""
    return _each_tensor(folder, lambda f, k: f.get(k))


def dtype_tags(folder) -> dict[str, str]:
    return _each_tensor(folder, lambda f, k: f.dtype_tag(k))


def dequantized_linears(folder, **kwargs) -> dict:
    """{module name: nn.Linear} of the compressed-tensors ``folder`` as transformers loads it
    with ``CompressedTensorsConfig(dequantize=True)`` (AutoModel, on the CPU)."""
    import torch
    import transformers
    from transformers import AutoModel, CompressedTensorsConfig

    transformers.logging.set_verbosity_error()
    model = AutoModel.from_pretrained(folder, quantization_config=CompressedTensorsConfig(
        dequantize=True), **kwargs).eval()
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
