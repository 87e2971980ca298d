"""NumPy, CuPy and torch arrays: detection, validation and zero-copy conversion.

Nothing here imports torch or CuPy: an array's framework is read off its
type's module, so ``import gpuquant`` works with only NumPy installed.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, EmptyTensorError, InvalidDtypeError, QuantizationError

__all__ = ["TensorInfo", "prepare", "framework_of", "to_numpy", "from_numpy", "as_ndarray",
           "FLOAT_DTYPES", "bf16_bits_to_f32", "f32_to_bf16_bits"]

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """What the caller gave: framework, dtype name, shape and device."""

    framework: str  # "numpy" | "torch" | "cupy"
    dtype: str
    shape: tuple[int, ...]
    device: str  # "cpu", "cuda:0", ...

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"


def framework_of(x: Any) -> str:
    """"torch", "cupy" or "numpy" (anything else is read as NumPy), from the type's module:
    the one place gpuquant tells frameworks apart without importing them."""
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return "torch"
    if module == "cupy":
        return "cupy"
    return "numpy"


def dtype_name(x: Any) -> str:
    return str(x.dtype).replace("torch.", "")


def array_device(x: Any) -> str:
    """"cpu", "cuda:N" or (torch) "meta", ... of any array."""
    return _device(x, framework_of(x))


def _device(x: Any, framework: str) -> str:
    if framework == "torch":
        return str(x.device) if x.device.type != "cpu" else "cpu"
    if framework == "cupy":
        return f"cuda:{x.device.id}"
    return "cpu"


def prepare(x: Any, name: str = "x", require_float: bool = True) -> tuple[Any, TensorInfo]:
    """Validate an input tensor and describe it. Lists and scalars go through ``np.asarray``."""
    framework = framework_of(x)
    if framework == "numpy" and type(x) is not np.ndarray:
        x = as_ndarray(x, name)
    elif framework == "torch" and str(x.layout) != "torch.strided":
        raise InvalidDtypeError(f"{name} is a torch tensor of layout {x.layout}; accepted: dense "
                                f"(strided) tensors: pass {name}.to_dense()")
    dtype = dtype_name(x)
    if require_float and dtype not in FLOAT_DTYPES:
        raise InvalidDtypeError(
            f"{name} has dtype {dtype}; accepted: float16, bfloat16 (torch), float32, float64"
        )
    if framework == "torch" and x.device.type == "meta":
        raise BackendUnavailableError(
            f"{name} is a torch tensor on the meta device, which holds no values; "
            "move it to 'cpu' or 'cuda' first")
    shape = tuple(int(s) for s in x.shape)
    if int(np.prod(shape, dtype=np.int64)) == 0:
        raise EmptyTensorError(f"{name} is empty (shape {shape}); quantization needs values")
    if framework == "torch" and getattr(x, "requires_grad", False):
        x = x.detach()
    return x, TensorInfo(framework, dtype, shape, _device(x, framework))


def as_ndarray(x: Any, name: str) -> np.ndarray:
    """``np.asarray(x)``, with InvalidDtypeError naming ``name`` where NumPy cannot make an
    array of it (ragged lists, a meta-device tensor, ...), and for a masked array, whose
    mask NumPy would drop."""
    refuse_masked(x, name)
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise InvalidDtypeError(f"{name} cannot be read as an array: "
                                f"{str(exc).splitlines()[0][:150]}") from None


def refuse_masked(x: Any, name: str) -> None:
    """InvalidDtypeError for a masked NumPy array: gpuquant would read its masked values."""
    ma = sys.modules.get("numpy.ma")  # without numpy.ma imported there are no masked arrays
    if ma is not None and isinstance(x, ma.MaskedArray):
        raise InvalidDtypeError(f"{name} is a masked NumPy array; gpuquant does not honour "
                                f"masks: pass {name}.filled(value) or {name}.compressed()")


def check_writable(buf: Any, name: str) -> None:
    """A QuantizationError unless gpuquant can write into the ``out=`` buffer ``buf``:
    an array (not a list), writable, outside autograd and holding memory (not meta)."""
    if not hasattr(buf, "shape") or not hasattr(buf, "dtype"):
        raise InvalidDtypeError(f"{name} must be an array of the result's framework, got "
                                f"{type(buf).__name__}")
    framework = framework_of(buf)
    if framework == "numpy":
        refuse_masked(buf, name)
        if not getattr(getattr(buf, "flags", None), "writeable", False):
            raise QuantizationError(f"{name} is read-only; pass a writable array")
    elif framework == "torch":
        if buf.device.type == "meta":
            raise BackendUnavailableError(f"{name} is on the meta device, which holds no "
                                          "values; pass a buffer on the input's device")
        if buf.requires_grad:
            raise QuantizationError(f"{name} requires grad; gpuquant writes outside autograd: "
                                    f"pass a buffer with requires_grad=False")


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16/int16) to float32, exactly."""
    return (bits.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even; NaN stays NaN) as uint16 bits."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16
    nan = np.isnan(x)
    bits = np.where(nan, (u >> 16) | np.uint32(0x40), rounded).astype(np.uint16)
    return bits.reshape(np.shape(x))


def to_numpy(x: Any, info: TensorInfo) -> np.ndarray:
    """A NumPy view of a CPU array (bfloat16 is widened to float32, exactly)."""
    if info.framework == "numpy":
        return x
    if info.framework != "torch" or info.on_gpu:
        raise BackendUnavailableError(
            f"the NumPy backend cannot read a {info.framework} array on {info.device}; "
            "gpuquant never moves data between devices: use backend='triton' or copy it to the CPU"
        )
    x = x.detach().resolve_neg()  # read as it is: requires grad, or the negative bit set
    if info.dtype == "bfloat16":
        import torch

        return bf16_bits_to_f32(x.view(torch.int16).numpy())
    try:
        return np.from_dlpack(x)
    except (TypeError, RuntimeError, BufferError):
        return x.numpy()


def from_numpy(arr: np.ndarray, info: TensorInfo, dtype: str | None = None) -> Any:
    """Return a NumPy result in the caller's framework (zero-copy for torch CPU)."""
    if info.framework == "numpy":
        if dtype == "bfloat16":  # NumPy has no bfloat16: float32 values rounded to it
            return bf16_bits_to_f32(f32_to_bf16_bits(arr))
        return arr
    import torch

    arr = arr if arr.flags.c_contiguous else arr.copy()  # ascontiguousarray makes 0-d 1-d
    if dtype == "bfloat16":
        return torch.from_numpy(arr.astype(np.float32, copy=False)).to(torch.bfloat16)
    return torch.from_numpy(arr)


def as_float(raw: np.ndarray, tag: str) -> np.ndarray:
    """A tensor read from safetensors as NumPy floats: "BF16" bits widen to float32, exactly."""
    return bf16_bits_to_f32(raw) if tag == "BF16" else raw


def host_copy(a: Any) -> np.ndarray:
    """A NumPy copy of a CuPy array or torch tensor (a NumPy array is returned as it is)."""
    framework = framework_of(a)
    if framework == "cupy":
        return a.get()
    if framework == "torch":
        return a.detach().cpu().resolve_neg().numpy()
    return np.asarray(a)


def output_dtype(dtype: Any, original: str, framework: str) -> str:
    """The output dtype name of a dequantize: ``dtype`` checked, or the original's."""
    if dtype is None:
        name = original
        if framework == "cupy" and name == "bfloat16":
            name = "float32"  # CuPy has no bfloat16
        # NumPy has none either: "bfloat16" here makes the NumPy backend compute float32 and
        # gpuquant.core.frameworks.from_numpy round the values to bfloat16, kept in float32
        return name
    name = str(dtype).replace("torch.", "")
    if isinstance(dtype, type) and issubclass(dtype, np.generic):
        name = np.dtype(dtype).name
    if name not in FLOAT_DTYPES:
        raise InvalidDtypeError(
            f"dtype={dtype!r} is not an output dtype; accepted: "
            + ", ".join(FLOAT_DTYPES)
        )
    if name == "bfloat16" and framework != "torch":
        raise InvalidDtypeError(
            f"dtype='bfloat16' needs torch tensors; this QuantizedTensor holds {framework} "
            "arrays, which have no bfloat16: use 'float16' or 'float32'"
        )
    return name
