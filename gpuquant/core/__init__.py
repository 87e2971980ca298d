"""Foundations under every layer: where a unit's qparams apply (layout), the one qparams formula,
int4 packing, the cached launch plans, array frameworks (NumPy, torch, CuPy), cache-sized blocks,
devices, the NaN/Inf board, ``out=`` buffers (out_buffers), and the NumPy references of the export
formats: compressed-tensors' pack-quantized int32 words (pack_quantized) and GGUF Q8_0 / Q4_0
blocks (ggml_blocks)."""
