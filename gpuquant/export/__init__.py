"""Export targets that inference engines load: compressed-tensors and GGUF.

``gq.export.compressed_tensors(model_dir, out_dir, options)`` writes a Hugging Face
model folder as compressed-tensors (``PackOptions``: pack-quantized, or int-quantized with
quantized activations; ``FloatOptions``: FP8 / NVFP4 / MXFP4) or as DeepSeek FP8 blocks
(``DeepSeekOptions``);
``gq.export.gguf(checkpoint, out_file, scheme="q8_0")`` writes GGUF Q8_0 or
Q4_0 blocks (llama.cpp's formats). Importing this package imports neither
transformers, torch nor gguf: they are imported when a function needs them.
"""

from __future__ import annotations

from .ctensors import PackOptions
from .ctensors_float import FloatOptions
from .deepseek_fp8 import DeepSeekOptions
from .gguf_file import gguf
from .hf_folder import compressed_tensors

__all__ = ["DeepSeekOptions", "FloatOptions", "PackOptions", "compressed_tensors", "gguf"]
