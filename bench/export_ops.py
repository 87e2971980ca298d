"""Benchmark cases of the export formats (gpuquant/export): GGUF blocks and pack-quantized.

GGUF Q8_0 / Q4_0 blocks are compared with gguf-py's ``gguf.quants.quantize``
(NumPy, on the CPU); on a GPU the kernel is judged against copy bandwidth.
``ct-pack-int4-g128`` quantizes with given qparams straight into int32 words
(on a GPU the one kernel of kernels/pack_quantized.py, judged like our own int4
layout against copy bandwidth); ``ct-export-int4-g128`` is the per-weight work
of ``gpuquant export``: calibrate, round the scales to float16, quantize and
pack, with the packed words copied back to the host.
"""

from __future__ import annotations

from collections.abc import Callable

OPS = ["gguf-q8_0", "gguf-q4_0", "ct-pack-int4-g128", "ct-export-int4-g128"]
_BLOCK_BYTES = {"gguf-q8_0": 34, "gguf-q4_0": 18}


def build(op: str, x, framework: str, case_type, itemsize: int):
    """A ``case_type`` (bench.ops.Case) for ``op`` on ``x``."""
    rows, cols = x.shape
    n = rows * cols
    base: dict[str, Callable[[], object]] = {}
    if op in _BLOCK_BYTES:
        scheme = op.split("-")[1]
        if framework == "numpy":
            from gpuquant.core.ggml_blocks import quantize_blocks

            try:
                import gguf
                import numpy as np

                qtype = getattr(gguf.GGMLQuantizationType, scheme.upper())
                base["gguf.quants.quantize"] = lambda: gguf.quants.quantize(
                    x.astype(np.float32, copy=False), qtype)
            except ImportError:
                pass
            ours = lambda: quantize_blocks(x, scheme)  # noqa: E731
        else:
            from gpuquant.backends.triton.export import quantize_gguf

            ours = lambda: quantize_gguf(x, scheme)  # noqa: E731
        return case_type(op, ours, n * itemsize + n // 32 * _BLOCK_BYTES[op], base)
    from gpuquant.export.ctensors import PackOptions, pack_weight

    options = PackOptions(scheme="int4", group_size=128)
    if op == "ct-pack-int4-g128":
        import gpuquant as gq

        config = options.quant_config()
        params = gq.calibrate(x, config)
        if framework == "numpy":
            from gpuquant.core.pack_quantized import words_from_codes_bytes

            ours = lambda: words_from_codes_bytes(  # noqa: E731
                gq.quantize(x, config, qparams=params).data, 4, True, cols)
        else:
            from gpuquant.backends.triton.export import quantize_pack32

            ours = lambda: quantize_pack32(x, params.scale, params.zero_point, 4,  # noqa: E731
                                           True, 128)
        return case_type(op, ours, n * itemsize + n // 2 + n // 128 * 8, base)
    if op == "ct-export-int4-g128":
        return case_type(op, lambda: pack_weight(x, options, "float16", "w"),
                         n * itemsize + n // 2 + n // 128 * 2, base)
    raise ValueError(f"unknown operation {op!r}")
