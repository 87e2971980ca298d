"""compressed-tensors "pack-quantized" int32 words: pack given codes, or quantize and pack.

A word holds PER = 32 / BITS unsigned codes, the first in the least
significant bits, consecutive along the packed axis; a short last word is
padded with zero bits (gpuquant/core/pack_quantized.py is the NumPy reference).
"""

import triton
import triton.language as tl

from .common import code_operand, codes, tile_coords


@triton.jit
def pack_words(stored, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr, PER: tl.constexpr,
               BITS: tl.constexpr):
    """(BLOCK_R, BLOCK_W * PER) unsigned codes -> (BLOCK_R, BLOCK_W) int32 words, LSB first."""
    s = tl.reshape(stored.to(tl.uint32), (BLOCK_R, BLOCK_W, PER))
    shift = (tl.arange(0, PER) * BITS).to(tl.uint32)
    word = tl.sum(s << shift[None, None, :], axis=2)  # disjoint bits: the sum is the OR
    return word.to(tl.int32, bitcast=True)


@triton.jit
def pack32_kernel(
    src_ptr, dst_ptr,
    n_rows, n_cols, n_words, stride_sr, stride_sc, stride_dr, stride_dw, word_tiles,
    BITS: tl.constexpr, PER: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """dst[r, w] = the codes src[r, w * PER + k], k < PER, packed LSB first.

    Any strides, so dim-0 packing (zero points) is this kernel on the
    transposed view. Reads n codes, writes n * BITS / 8 bytes.
    """
    tile_w, row, word, row_ok, word_ok = tile_coords(word_tiles, n_rows, n_words, BLOCK_R,
                                                     BLOCK_W)
    col = tile_w * (BLOCK_W * PER) + tl.arange(0, BLOCK_W * PER)
    mask = row_ok[:, None] & (col < n_cols)[None, :]
    stored = tl.load(src_ptr + row[:, None] * stride_sr + col[None, :] * stride_sc, mask=mask,
                     other=0)
    words = pack_words(stored, BLOCK_R, BLOCK_W, PER, BITS)
    tl.store(dst_ptr + row[:, None] * stride_dr + word[None, :] * stride_dw, words,
             mask=row_ok[:, None] & word_ok[None, :])


@triton.jit
def quantize_pack32_kernel(
    x_ptr, dst_ptr, scale_ptr, zp_ptr,
    n_rows, n_cols, n_words, stride_x, stride_d, group_size, groups, word_tiles,
    QMIN: tl.constexpr, QMAX: tl.constexpr, OFFSET: tl.constexpr,
    BITS: tl.constexpr, PER: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
    HALF_RANGE: tl.constexpr = False,
):
    """Quantize a (rows, cols) weight with per-group 1 / scale and zero points and pack it
    (HALF_RANGE: codes of x / scale, compressed-tensors' division).

    q = clamp(rint(x * inv) + zp, QMIN, QMAX) + OFFSET (common.codes), where
    inv = 1 / scale is one IEEE division per unit (common.reciprocal). Groups
    of group_size columns (group_size = cols per channel), ``groups`` a row.
    Reads n elements and the per-unit values (cached), writes n * BITS / 8 bytes.
    """
    tile_w, row, word, row_ok, word_ok = tile_coords(word_tiles, n_rows, n_words, BLOCK_R,
                                                     BLOCK_W)
    col = tile_w * (BLOCK_W * PER) + tl.arange(0, BLOCK_W * PER)
    mask = row_ok[:, None] & (col < n_cols)[None, :]
    x = tl.load(x_ptr + row[:, None] * stride_x + col[None, :], mask=mask, other=0.0)
    unit = row[:, None] * groups + (col // group_size)[None, :]
    inv = code_operand(tl.load(scale_ptr + unit, mask=mask, other=1.0), HALF_RANGE)
    zp = tl.load(zp_ptr + unit, mask=mask, other=0)
    q = tl.where(mask, codes(x.to(tl.float32), inv, zp, QMIN, QMAX, HALF_RANGE) + OFFSET, 0)
    words = pack_words(q, BLOCK_R, BLOCK_W, PER, BITS)
    tl.store(dst_ptr + row[:, None] * stride_d + word[None, :], words,
             mask=row_ok[:, None] & word_ok[None, :])
