"""Which GPU array library can take NumPy arrays to a device (placeholder: see the CLI branch)."""

from __future__ import annotations


def device_converter():
    """A function moving NumPy arrays to the GPU (CuPy first, then torch), or None."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy.asarray
    except Exception:  # noqa: BLE001 - no CuPy or no device
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return lambda a: torch.from_numpy(a).cuda()
    except ImportError:
        pass
    return None
