"""Which GPU, if any, the command line uses: decided without importing torch when none is there.

Importing torch costs seconds and hundreds of MB, so ``auto`` first rules a
GPU out with cheap looks: ``CUDA_VISIBLE_DEVICES`` set to "" or "-1", no
NVIDIA driver on Linux (neither ``/proc/driver/nvidia`` nor WSL's
``/dev/dxg``), no Triton installed, or CuPy (when installed) counting no
device. Only then is torch imported and asked.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError

__all__ = ["NO_GPU", "cuda_ruled_out", "device_converter", "converter_for"]

NO_GPU = ("no working GPU (needs CuPy or torch with CUDA, and Triton: "
          "pip install 'gpuquant[gpu]')")

Converter = Callable[[np.ndarray], Any]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cuda_ruled_out() -> bool:
    """True when no CUDA device can be visible to this process, decided without imports."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return True
    if sys.platform.startswith("linux") and not (
            os.path.exists("/proc/driver/nvidia") or os.path.exists("/dev/dxg")):
        return True
    return not _installed("triton")


def _cupy_converter() -> tuple[bool, Converter | None]:
    """(whether CuPy answered, its converter when it counts a device)."""
    if not _installed("cupy"):
        return False, None
    try:
        import cupy
    except ImportError:
        return False, None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:  # no driver, or no device
        count = 0
    return True, (cupy.asarray if count > 0 else None)


def device_converter() -> Converter | None:
    """A function moving NumPy arrays to the GPU (CuPy first, then torch), or None."""
    if cuda_ruled_out():
        return None
    answered, convert = _cupy_converter()
    if answered:
        return convert
    if not _installed("torch"):
        return None
    import torch

    if torch.cuda.is_available():
        return lambda a: torch.from_numpy(a).cuda()
    return None


def converter_for(choice: str) -> Converter | None:
    """The converter for ``--device`` auto / cpu / cuda; "cuda" without a GPU is an error."""
    if choice == "cpu":
        return None
    convert = device_converter()
    if convert is None and choice == "cuda":
        raise BackendUnavailableError(f"--device cuda: {NO_GPU}")
    return convert
