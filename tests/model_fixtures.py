"""A tiny BERT folder with a character-level tokenizer, built offline (no downloads)."""

from __future__ import annotations

import string


def save_tokenizer(path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = string.ascii_lowercase + string.digits + ".,'"
    vocab = {"[PAD]": 0, "[UNK]": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token a character
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                            pad_token="[PAD]").save_pretrained(path)


def save_tiny_bert(path, hidden: int = 128, seed: int = 2) -> str:
    """BERT, 2 layers, hidden 128 (int4 groups of 128 fit), with its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=48, hidden_size=hidden, intermediate_size=2 * hidden,
                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128)
    BertModel(config).save_pretrained(path, safe_serialization=True)
    save_tokenizer(path)
    return str(path)
