"""``gpuquant quantize CKPT -o OUT.gguf --format gguf-q8_0|gguf-q4_0|gguf-mxfp4``: a GGUF file.

Floating tensors of two or more dimensions whose rows are a multiple of 32
(and that the include/exclude globs select) become Q8_0, Q4_0 or MXFP4 blocks;
every other tensor is stored as it is: float16 as F16, other floats as F32,
integers as I8/I16/I32/I64. The file is written through ``gguf.GGUFWriter``
one tensor at a time (headers planned from the safetensors headers first)
into a temporary file that is renamed when complete.

The file holds tensors, ``general.architecture = "gpuquant"`` and
``general.file_type`` (MOSTLY_Q8_0, MOSTLY_Q4_0, or for MXFP4 MOSTLY_MXFP4_MOE, the
one llama.cpp file type of MXFP4, which gguf-py names "except 1d tensors") only: a
model llama.cpp runs also needs the architecture metadata (hyperparameters,
tokenizer) and tensor names that llama.cpp's ``convert_hf_to_gguf.py`` writes.
"""

from __future__ import annotations

import fnmatch
import time
from typing import Any

import numpy as np

from ..backends import select, select_for
from ..checkpoint.files import SafetensorsFile
from ..checkpoint.index import open_checkpoint
from ..checkpoint.output import staged_file
from ..core.devices import converter_for
from ..core.frameworks import TensorInfo, as_float, host_copy
from ..core.ggml_blocks import BLOCK, block_bytes
from ..errors import BackendUnavailableError, QuantizationError

__all__ = ["gguf", "import_gguf", "ARCH"]

_HOST = TensorInfo("numpy", "float32", (), "cpu")  # what selects the NumPy backend

ARCH = "gpuquant"
_KEEP = {"F16": np.float16, "F32": np.float32, "F64": np.float32, "BF16": np.float32,
         "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64}


def import_gguf():
    try:
        import gguf
    except ImportError as exc:
        raise BackendUnavailableError(f"GGUF needs the gguf package ({exc}): "
                                      "pip install 'gpuquant[export]'") from None
    return gguf


def _plan(f: SafetensorsFile, scheme: str, include: list[str], exclude: list[str]) -> list[tuple]:
    """(key, quantized?, numpy dtype, shape written) for each tensor of one shard."""
    plan = []
    for key in f.keys():
        tag, shape = f.dtype_tag(key), f.shape(key)
        if tag not in _KEEP:
            raise QuantizationError(f"{f.path}: tensor {key!r} has dtype {tag}, which GGUF does "
                                    "not store; accepted: floats and I8/I16/I32/I64")
        chosen = any(fnmatch.fnmatchcase(key, g) for g in include) and \
            not any(fnmatch.fnmatchcase(key, g) for g in exclude)
        if chosen and tag in ("F16", "BF16", "F32", "F64") and len(shape) >= 2 \
                and shape[-1] % BLOCK == 0:
            written = (*shape[:-1], shape[-1] // BLOCK * block_bytes(scheme))
            plan.append((key, True, np.dtype(np.uint8), written))
        else:
            plan.append((key, False, np.dtype(_KEEP[tag]), shape))
    return plan


def _quantizer(device: str):
    """(raw NumPy tensor, scheme, bf16 bits?) -> block bytes (NumPy uint8), through the backend
    of the CPU or of the GPU."""
    to_device = None if device == "cpu" else converter_for(device)
    if to_device is None:
        return select(_HOST).quantize_gguf  # bfloat16 bits are widened a piece at a time

    def on_device(raw: np.ndarray, scheme: str, bf16_bits: bool) -> np.ndarray:
        x = to_device(np.ascontiguousarray(as_float(raw, "BF16" if bf16_bits else "F32")))
        return host_copy(select_for(x).quantize_gguf(x, scheme))

    return on_device


def gguf(source: str, output: str, scheme: str = "q8_0", *, force: bool = False,
         include: list[str] | None = None, exclude: list[str] | None = None,
         device: str = "cpu") -> dict[str, Any]:
    """Write the tensors of a safetensors checkpoint to a GGUF file with Q8_0, Q4_0 or MXFP4
    blocks.

    Args:
        source: a .safetensors file, a folder of shards, or an index .json.
        output: the .gguf file; an existing one needs ``force=True``.
        scheme: "q8_0", "q4_0" or "mxfp4".
        include, exclude: glob patterns of tensor names (default: all, none).
        device: "cpu", "auto" or "cuda" (the Triton kernel of kernels/gguf.py).
    """
    block_bytes(scheme)
    lib = import_gguf()
    qtype = getattr(lib.GGMLQuantizationType, scheme.upper())
    file_type = {"q8_0": lib.LlamaFileType.MOSTLY_Q8_0, "q4_0": lib.LlamaFileType.MOSTLY_Q4_0,
                 "mxfp4": lib.LlamaFileType.MOSTLY_MXFP4_MOE}[scheme]
    start = time.perf_counter()
    checkpoint = open_checkpoint(source)
    include, exclude = include or ["*"], exclude or []
    plans = []
    for shard in checkpoint.shards:
        with SafetensorsFile(shard) as f:
            plans.append((shard, _plan(f, scheme, include, exclude)))
    quantize_fn = _quantizer(device)
    stats = {"quantized": 0, "kept": 0, "bytes_in": 0, "bytes_out": 0}
    with staged_file(output, checkpoint.inputs, force) as tmp:
        writer = lib.GGUFWriter(None, ARCH)
        writer.add_file_type(int(file_type))
        for _, plan in plans:
            for key, quantized, dtype, shape in plan:
                writer.add_tensor_info(key, shape, dtype, int(np.prod(shape)) * dtype.itemsize,
                                       raw_dtype=qtype if quantized else None)
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for shard, plan in plans:
            with SafetensorsFile(shard) as f:
                for key, quantized, dtype, _ in plan:
                    raw = f.get(key)
                    stats["bytes_in"] += raw.nbytes
                    bf16 = f.dtype_tag(key) == "BF16"
                    try:
                        data = quantize_fn(raw, scheme, bf16) if quantized else \
                            as_float(raw, f.dtype_tag(key)).astype(dtype, copy=False)
                    except QuantizationError as exc:
                        raise type(exc)(f"{f.path}: tensor {key!r}: {exc}") from None
                    stats["quantized" if quantized else "kept"] += 1
                    stats["bytes_out"] += data.nbytes
                    writer.write_tensor_data(np.ascontiguousarray(data))
        writer.close()
    stats["seconds"] = time.perf_counter() - start
    return stats
