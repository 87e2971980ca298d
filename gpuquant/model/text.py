"""Calibration samples from text: one sample a line, tokenized with the model's tokenizer."""

from __future__ import annotations

import os

from ..errors import FormatError, QuantizationError

__all__ = ["read_lines", "load_tokenizer", "tokenize_samples"]


def read_lines(path: str, samples: int | None = None) -> list[str]:
    """The non-empty lines of a UTF-8 text file (the first ``samples`` of them)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise FormatError(f"{path}: no such calibration file") from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"{path}: not UTF-8 text ({exc})") from None
    if not lines:
        raise QuantizationError(f"{path}: no calibration text (one sample a line)")
    return lines if samples is None else lines[:samples]


def load_tokenizer(model_dir: str):
    """The tokenizer saved in a model folder (transformers' AutoTokenizer, local files only)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - transformers raises many kinds here
        raise FormatError(f"{os.path.abspath(model_dir)}: no tokenizer to read the calibration "
                          f"text with ({type(exc).__name__}: {str(exc)[:160]})") from None


def tokenize_samples(tokenizer, lines: list[str], seq_len: int, device=None) -> list[dict]:
    """One model input (a mapping for ``model(**item)``) per line, at most ``seq_len`` tokens."""
    if not (isinstance(seq_len, int) and seq_len >= 1):
        raise QuantizationError(f"seq_len={seq_len!r} must be an integer >= 1")
    items = []
    for line in lines:
        enc = tokenizer(line, return_tensors="pt", truncation=True, max_length=seq_len)
        items.append({k: v if device is None else v.to(device) for k, v in enc.items()})
    return items
