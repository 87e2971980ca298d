"""Unpack + dequantize: y = float32(q - zero_point) * scale, rounded to the output dtype."""

import triton
import triton.language as tl

from .common import unpack_pairs
from .quantize import params_tile


@triton.jit
def dequantize_tile_kernel(
    q_ptr, y_ptr, scale_ptr, zp_ptr,
    n_rows, n_cols, stride_q_row, stride_y_row, units_per_row, group_size, col_tiles,
    MODE: tl.constexpr, PACKED: tl.constexpr, SIGNED: tl.constexpr, HIGH_FIRST: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Reads n codes (n / 2 bytes packed) and the params; writes n outputs.
    1-D grid of (row tile, column tile), as quantize_tile_kernel."""
    pid = tl.program_id(0).to(tl.int64)
    tile_c = pid % col_tiles
    row = (pid // col_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tile_c * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = row < n_rows
    col_ok = col < n_cols
    mask = row_ok[:, None] & col_ok[None, :]
    if PACKED:
        half = tile_c * (BLOCK_C // 2) + tl.arange(0, BLOCK_C // 2)
        b = tl.load(q_ptr + row[:, None] * stride_q_row + half[None, :],
                    mask=row_ok[:, None] & (half < (n_cols + 1) // 2)[None, :], other=0)
        q = unpack_pairs(b, BLOCK_R, BLOCK_C // 2, SIGNED, HIGH_FIRST)
    else:
        q = tl.load(q_ptr + row[:, None] * stride_q_row + col[None, :], mask=mask,
                    other=0).to(tl.int32)
    scale = params_tile(scale_ptr, row, col, row_ok, col_ok, units_per_row, group_size, MODE)
    zp = params_tile(zp_ptr, row, col, row_ok, col_ok, units_per_row, group_size, MODE)
    y = (q - zp).to(tl.float32) * scale
    tl.store(y_ptr + row[:, None] * stride_y_row + col[None, :], y.to(y_ptr.dtype.element_ty),
             mask=mask)
