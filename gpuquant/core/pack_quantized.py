"""compressed-tensors' "pack-quantized" int32 layout, in NumPy.

Codes of b bits (4 or 8) are stored unsigned: a signed code q in
[-2^(b-1), 2^(b-1) - 1] is stored as q + 2^(b-1); gpuquant's asymmetric
codes and zero points are already unsigned and stored as they are. Each
int32 word holds 32 / b stored codes, the first in the least significant
bits, consecutive along the packed dimension; a short last word is padded
with zero bits. Weights pack along dim 1 (shape ``[out, ceil(in * b / 32)]``),
zero points along dim 0 (shape ``[ceil(out * b / 32), groups]``).

On a little-endian machine that word is the 4 bytes of 8 low-nibble-first
int4 codes (or of 4 int8 codes) read as one int32, so gpuquant's own int4
packing with ``nibble_order="low_first"`` becomes this layout by flipping
the sign bit of each code (the +2^(b-1) offset) and padding rows to whole
words: :func:`words_from_codes_bytes` does that without unpacking.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidShapeError

__all__ = ["pack32", "unpack32", "words_from_codes_bytes", "packed_width"]

_BITS = (4, 8)


def _check_bits(bits: int) -> None:
    if bits not in _BITS:
        raise InvalidShapeError(f"bits={bits!r}; pack-quantized export supports 4 and 8")


def packed_width(n: int, bits: int) -> int:
    """Words holding n codes of ``bits`` bits: ceil(n * bits / 32)."""
    return -(-n * bits // 32)


def _words_from_bytes(b: np.ndarray) -> np.ndarray:
    """uint8 rows (rows, nbytes) -> int32 rows (rows, ceil(nbytes / 4)), zero-padded."""
    pad = -b.shape[1] % 4
    if pad:
        b = np.pad(b, ((0, 0), (0, pad)))
    return np.ascontiguousarray(b).view("<i4").astype(np.int32, copy=False)


def pack32(stored: np.ndarray, bits: int, dim: int = 1) -> np.ndarray:
    """Pack unsigned stored codes (rows, cols) into int32 words along ``dim`` (0 or 1)."""
    _check_bits(bits)
    stored = np.asarray(stored)
    if stored.ndim != 2 or dim not in (0, 1):
        raise InvalidShapeError(f"pack32 takes a 2-D array and dim 0 or 1, got shape "
                                f"{stored.shape} and dim={dim!r}")
    if dim == 0:
        return np.ascontiguousarray(pack32(stored.T, bits).T)
    if stored.size and (stored.min() < 0 or stored.max() >= 1 << bits):
        raise InvalidShapeError(f"stored codes must lie in [0, {(1 << bits) - 1}] for {bits} bits")
    u = stored.astype(np.uint8)
    if bits == 4:
        if u.shape[1] % 2:
            u = np.pad(u, ((0, 0), (0, 1)))
        u = u[:, 0::2] | (u[:, 1::2] << 4)
    return _words_from_bytes(u)


def unpack32(words: np.ndarray, bits: int, n: int, dim: int = 1) -> np.ndarray:
    """Stored codes (uint8) from int32 words: the inverse of :func:`pack32`, n codes long."""
    _check_bits(bits)
    words = np.asarray(words, dtype=np.int32)
    if dim == 0:
        return np.ascontiguousarray(unpack32(words.T, bits, n).T)
    b = np.ascontiguousarray(words).view(np.uint8).reshape(words.shape[0], -1)
    if bits == 4:
        b = np.stack([b & 0xF, b >> 4], axis=-1).reshape(words.shape[0], -1)
    if b.shape[1] < n:
        raise InvalidShapeError(f"{words.shape[1]} words hold {b.shape[1]} codes, fewer than {n}")
    return b[:, :n]


def words_from_codes_bytes(data: np.ndarray, bits: int, symmetric: bool, n: int) -> np.ndarray:
    """int32 words from gpuquant's stored codes (rows, bytes): int4 packed low nibble
    first, or int8/uint8; ``n`` codes a row. Symmetric codes get the +2^(b-1) offset."""
    _check_bits(bits)
    b = np.ascontiguousarray(data).view(np.uint8)
    if symmetric:
        b = b ^ np.uint8(0x88 if bits == 4 else 0x80)  # q + 2^(b-1) is q with its sign bit flipped
        if bits == 4 and n % 2:
            b[:, -1] &= 0x0F  # the padding nibble stays zero
    return _words_from_bytes(b)
