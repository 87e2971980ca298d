"""A tiny random Llama whose Linear weights are whole 128x128 blocks (DeepSeek FP8 export)."""

from __future__ import annotations


def save_llama_blocks(path, dtype: str = "float32") -> str:
    """hidden 128, intermediate 256, 4 heads of 32 with 4 KV heads: q/k/v/o 128x128, gate/up
    256x128, down 128x256; lm_head 100x128 (not whole blocks: left in float)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(2)
    config = LlamaConfig(vocab_size=100, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=64, dtype=dtype)
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(path)
    return str(path)


def read_with_fp8(folder) -> tuple[dict, dict]:
    """({name: array}, {name: dtype tag}) of a folder's safetensors files, FP8 as its bits."""
    import os

    from gpuquant.checkpoint.files import SafetensorsFile

    arrays, tags = {}, {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            with SafetensorsFile(os.path.join(folder, name), fp8=True) as f:
                arrays.update({k: f.get(k) for k in f.keys()})
                tags.update({k: f.dtype_tag(k) for k in f.keys()})
    return arrays, tags
