"""int4 nibble packing: two 4-bit codes per uint8 along the last axis.

``high_first`` (the default, bitsandbytes' order) puts the element with the
even index in the high nibble; ``low_first`` (ONNX, quint4x2) puts it in the
low nibble. Signed codes are stored as 4-bit two's complement and
sign-extended on unpack. An odd last dimension pads each row with one zero
nibble, so the packed shape is ``(..., ceil(K / 2))``; a 0-d tensor packs as
one element.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidDtypeError, InvalidShapeError, QuantizationError
from .frameworks import as_ndarray

__all__ = ["pack_int4", "unpack_int4", "pack_rows", "unpack_rows"]

_ORDERS = ("high_first", "low_first")


def _check_order(nibble_order: str) -> None:
    if not isinstance(nibble_order, str) or nibble_order not in _ORDERS:
        raise QuantizationError(
            f"nibble_order={nibble_order!r} is not supported; accepted: 'high_first', 'low_first'"
        )


def pack_rows(codes: np.ndarray, nibble_order: str, out: np.ndarray | None = None) -> np.ndarray:
    """Pack a 2-D block of int4 codes (int8 or uint8) into bytes along axis 1."""
    rows, cols = codes.shape
    nbytes = (cols + 1) // 2
    if out is None:
        out = np.empty((rows, nbytes), dtype=np.uint8)
    if cols % 2 == 0 and codes.flags.c_contiguous:
        # each pair of codes is one little-endian uint16: even element in the low byte
        pair = codes.view(np.uint16)
        if nibble_order == "high_first":
            word = np.left_shift(pair, np.uint16(4))
            word |= np.right_shift(pair, np.uint16(8)) & np.uint16(0x0F)
        else:
            word = pair & np.uint16(0x0F)
            word |= np.right_shift(pair, np.uint16(4)) & np.uint16(0xF0)
        np.copyto(out, word, casting="unsafe")  # keeps the low byte
        return out
    u = codes.view(np.uint8)
    first, second = u[:, 0::2], u[:, 1::2]
    npair = second.shape[1]
    if nibble_order == "high_first":
        np.left_shift(first, np.uint8(4), out=out)
        pair = out[:, :npair]
        pair |= second & np.uint8(0x0F)
    else:
        np.bitwise_and(first, np.uint8(0x0F), out=out)
        pair = out[:, :npair]
        pair |= np.left_shift(second, np.uint8(4))
    return out


def unpack_rows(packed: np.ndarray, cols: int, signed: bool, nibble_order: str,
                out: np.ndarray | None = None) -> np.ndarray:
    """Unpack a 2-D block of bytes into ``cols`` int4 codes per row (int8 or uint8)."""
    rows = packed.shape[0]
    dtype = np.int8 if signed else np.uint8
    if out is None:
        out = np.empty((rows, cols), dtype=dtype)
    # high nibble: arithmetic shift of the int8 view sign-extends, logical of uint8 does not
    high = np.right_shift(packed.view(dtype), 4)
    low = np.right_shift(np.left_shift(packed, 4).view(dtype), 4)
    first, second = (high, low) if nibble_order == "high_first" else (low, high)
    out[:, 0::2] = first[:, : (cols + 1) // 2]
    out[:, 1::2] = second[:, : cols // 2]
    return out


def pack_int4(codes, nibble_order: str = "high_first", signed: bool | None = None):
    """Pack int4 codes (any integer dtype) two per byte along the last axis.

    ``signed=True`` accepts codes in -8..7, ``False`` in 0..15; ``None`` (the
    default) infers it, and refuses codes that mix negatives with values above
    7 (neither range holds both). Codes outside the range raise
    InvalidDtypeError: they do not fit the 4-bit type. Returns uint8 of shape
    ``(..., ceil(K / 2))`` (``(1,)`` for a 0-d input; empty input gives empty
    output).
    """
    _check_order(nibble_order)
    if signed is not None and not isinstance(signed, (bool, np.bool_)):
        raise QuantizationError(f"signed={signed!r} must be True, False or None")
    codes = as_ndarray(codes, "codes")
    if codes.dtype.kind not in "iu":
        raise InvalidDtypeError(f"codes must be an integer array, got dtype {codes.dtype}")
    if codes.size:
        lo, hi = int(codes.min()), int(codes.max())
        if signed is None and lo < 0 and hi > 7:
            raise InvalidDtypeError(
                f"codes mix signed and unsigned int4 values ({lo}..{hi}): signed codes lie in "
                "-8..7, unsigned in 0..15; pass signed= to say which")
        is_signed = lo < 0 if signed is None else bool(signed)
        qmin, qmax = (-8, 7) if is_signed else (0, 15)
        if lo < qmin or hi > qmax:
            raise InvalidDtypeError(
                f"codes must lie in {qmin}..{qmax} ({'signed' if is_signed else 'unsigned'} "
                f"int4; signed codes lie in -8..7, unsigned in 0..15); got {lo}..{hi}")
    shape = codes.shape if codes.ndim else (1,)
    flat = codes.astype(np.int8).reshape(math.prod(shape[:-1]), shape[-1])
    packed = pack_rows(flat, nibble_order)
    return packed.reshape(*shape[:-1], packed.shape[-1])


def unpack_int4(packed, length: int, signed: bool = True, nibble_order: str = "high_first"):
    """Inverse of :func:`pack_int4`: ``length`` codes per row, int8 (signed) or uint8."""
    _check_order(nibble_order)
    packed = as_ndarray(packed, "packed")
    if packed.dtype != np.uint8:
        raise InvalidDtypeError(f"packed must be uint8, got dtype {packed.dtype}")
    if packed.ndim == 0:
        raise InvalidShapeError("packed must have at least one dimension")
    if (isinstance(length, bool) or not isinstance(length, (int, np.integer))
            or length < 0):
        raise InvalidShapeError(f"length={length!r} must be a non-negative integer")
    if not isinstance(signed, (bool, np.bool_)):
        raise QuantizationError(f"signed={signed!r} must be True or False")
    length = int(length)
    if packed.shape[-1] != (length + 1) // 2:
        raise InvalidShapeError(
            f"packed has {packed.shape[-1]} bytes per row; length={length} needs {(length + 1) // 2}"
        )
    flat = np.ascontiguousarray(packed).reshape(math.prod(packed.shape[:-1]), packed.shape[-1])
    codes = unpack_rows(flat, length, signed, nibble_order)
    return codes.reshape(*packed.shape[:-1], length)
