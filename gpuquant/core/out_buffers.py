"""Results copied into the caller's ``out=`` buffers, after a check of each buffer.

The NumPy backend's runners compute into fresh arrays and hand them over here,
so that ``out=`` means the same on every backend (the Triton runners write into
the buffers directly, after the same kind of check).
"""

from __future__ import annotations

from ..errors import InvalidDtypeError, InvalidShapeError
from .frameworks import check_writable

__all__ = ["copy_into"]


def copy_into(out, results):
    """Copy CPU results into the caller's ``out=`` buffers after checking them."""
    if not isinstance(out, (tuple, list)) or len(out) != len(results):
        raise InvalidShapeError(f"out= takes {len(results)} buffer(s)")
    for index, (buf, value) in enumerate(zip(out, results)):
        name = f"out[{index}]" if len(results) > 1 else "out"
        check_writable(buf, name)
        if tuple(buf.shape) != tuple(value.shape):
            raise InvalidShapeError(f"{name} has shape {tuple(buf.shape)}; this call writes "
                                    f"{tuple(value.shape)}")
        if str(buf.dtype) != str(value.dtype):
            raise InvalidDtypeError(f"{name} has dtype {buf.dtype}; this call writes {value.dtype}")
        if type(buf) is not type(value):
            raise InvalidDtypeError(f"{name} is a {type(buf).__name__}; this call writes a "
                                    f"{type(value).__name__}")
        if hasattr(buf, "copy_"):
            buf.copy_(value)
        else:
            buf[...] = value  # NumPy or CuPy
    return tuple(out)
