"""Launchers of the export kernels (kernels/pack_quantized.py, kernels/gguf.py).

Inputs are torch CUDA tensors or CuPy arrays (torch CPU tensors under
TRITON_INTERPRET=1, which is how CI checks them bit for bit against the
NumPy paths of gpuquant/export). Outputs are allocated on the input's device.
"""

from __future__ import annotations

import numpy as np

from ...errors import BackendUnavailableError, InvalidShapeError, NonFiniteError
from ..array_ops import ops_for
from .launch import launch

try:
    import triton

    from gpuquant.kernels import gguf as _gguf
    from gpuquant.kernels import pack_quantized as _pack32
except ImportError as exc:  # pragma: no cover - depends on the machine
    raise BackendUnavailableError(
        f"the export kernels need Triton (>= 3.6): pip install 'gpuquant[gpu]' ({exc})"
    ) from None

__all__ = ["pack32", "quantize_pack32", "quantize_gguf"]

_BLOCK_R, _BLOCK_W = 16, 16  # 16 rows x 128 (int4) or 64 (int8) codes a program
_GGUF_BLOCKS = 32  # blocks of 32 values a program
_GGUF = {"q8_0": (_gguf.q8_0_kernel, 34), "q4_0": (_gguf.q4_0_kernel, 18),
         "mxfp4": (_gguf.mxfp4_kernel, 17)}


def _words(n: int, bits: int) -> int:
    return -(-n * bits // 32)


def pack32(stored, bits: int, dim: int = 1):
    """int32 words of unsigned codes (rows, cols) packed along ``dim``: the layout of
    gpuquant.core.pack_quantized.pack32, on the device."""
    if bits not in (4, 8) or dim not in (0, 1) or len(stored.shape) != 2:
        raise InvalidShapeError(f"pack32 takes 2-D codes, bits 4 or 8 and dim 0 or 1; got shape "
                                f"{tuple(stored.shape)}, bits={bits}, dim={dim}")
    ops = ops_for(stored)
    stored = ops.contiguous(stored)
    rows, cols = (int(s) for s in stored.shape)
    s_r, s_c = cols, 1
    if dim == 0:  # pack the transposed view
        rows, cols, s_r, s_c = cols, rows, s_c, s_r
    n_words = _words(cols, bits)
    out = ops.empty((rows, n_words) if dim == 1 else (n_words, rows), "int32", stored)
    d_r, d_w = (n_words, 1) if dim == 1 else (1, rows)
    word_tiles = triton.cdiv(n_words, _BLOCK_W)
    with ops.launching(stored):
        launch(_pack32.pack32_kernel, (triton.cdiv(rows, _BLOCK_R) * word_tiles,),
                stored, out, rows, cols, n_words, s_r, s_c,
                d_r, d_w, word_tiles, BITS=bits, PER=32 // bits, BLOCK_R=_BLOCK_R,
                BLOCK_W=_BLOCK_W)
    return out


def _on_device(ops, a, dtype: str, like):
    """``a`` (NumPy, or already an array of like's framework and device) as a contiguous
    ``dtype`` array there."""
    if isinstance(a, np.ndarray):
        return ops.from_host(np.ascontiguousarray(a, dtype), like)
    return ops.contiguous(ops.astype(a, dtype))


def quantize_pack32(x, scale, zero_point, bits: int, symmetric: bool, group_size: int,
                    half_range: bool = False):
    """Quantize a 2-D weight with given per-group float32 scales and int32 zero points
    (shaped (rows, groups): NumPy, or on x's device) and pack it into int32 words, in
    one kernel (``half_range``: codes of x / scale)."""
    ops = ops_for(x)
    rows, cols = (int(s) for s in x.shape)
    if cols % group_size:
        raise InvalidShapeError(f"group_size {group_size} does not divide {cols} columns")
    groups = cols // group_size
    x2 = ops.as_2d(x, rows, cols)
    scale = _on_device(ops, scale, "float32", x2).reshape(rows, groups)
    zp = _on_device(ops, zero_point, "int32", x2).reshape(rows, groups)
    qmin, qmax = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if symmetric else (0, (1 << bits) - 1)
    n_words = _words(cols, bits)
    out = ops.empty((rows, n_words), "int32", x2)
    word_tiles = triton.cdiv(n_words, _BLOCK_W)
    with ops.launching(x2):
        launch(_pack32.quantize_pack32_kernel, (triton.cdiv(rows, _BLOCK_R) * word_tiles,),
                x2, out, scale, zp, rows, cols, n_words,
                ops.row_stride(x2), n_words, group_size, groups, word_tiles,
                QMIN=qmin, QMAX=qmax, OFFSET=(1 << (bits - 1)) if symmetric else 0,
                BITS=bits, PER=32 // bits, BLOCK_R=_BLOCK_R, BLOCK_W=_BLOCK_W,
                HALF_RANGE=half_range)
    return out


def quantize_gguf(x, scheme: str):
    """GGUF Q8_0 / Q4_0 / MXFP4 blocks of ``x`` (last dimension a multiple of 32) as uint8
    ``(*x.shape[:-1], x.shape[-1] // 32 * bytes)``; NaN or Inf raises NonFiniteError."""
    if scheme not in _GGUF:
        raise InvalidShapeError(f"scheme={scheme!r}; accepted: " + ", ".join(_GGUF))
    kernel, size = _GGUF[scheme]
    shape = tuple(int(s) for s in x.shape)
    if not shape or shape[-1] % 32:
        raise InvalidShapeError(f"GGUF {scheme.upper()} needs a last dimension that is a "
                                f"multiple of 32, got shape {shape}")
    ops = ops_for(x)
    n_blocks = int(np.prod(shape)) // 32
    flat = ops.contiguous(x).reshape(n_blocks, 32)
    out = ops.empty((n_blocks, size), "uint8", flat)
    programs = triton.cdiv(n_blocks, _GGUF_BLOCKS)
    flags = ops.empty((programs, 2), "int32", flat)
    with ops.launching(flat):
        launch(kernel, (programs,), flat, out, flags, n_blocks, BLOCK_B=_GGUF_BLOCKS)
    bad, big = (int(v) for v in ops.to_host(flags).sum(axis=0))
    if bad:
        raise NonFiniteError(f"x of shape {shape} has {bad} non-finite value(s) (NaN or Inf); "
                             "GGUF blocks need finite values: clean the data first")
    if big:
        raise InvalidShapeError(f"{big} block(s) need a scale above float16's 65504; keep this "
                                "tensor unquantized")
    return out.reshape(*shape[:-1], shape[-1] // 32 * size)
