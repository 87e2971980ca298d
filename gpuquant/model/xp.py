"""The few array functions the model-level solvers (HQQ, GPTQ) need, for NumPy and torch alike.

``namespace(a)`` returns NumPy itself for NumPy arrays and a small shim of torch
functions under NumPy's names for torch tensors, so one body of code runs on the
CPU in NumPy and on any torch device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["namespace", "NumpyNS", "TorchNS"]


class NumpyNS:
    name = "numpy"
    rint, clip, abs, sign, where, isfinite = np.rint, np.clip, np.abs, np.sign, np.where, np.isfinite
    maximum, minimum, sqrt = np.maximum, np.minimum, np.sqrt

    @staticmethod
    def sum(a, axis=None, keepdims=False):
        return a.sum(axis=axis, keepdims=keepdims)

    @staticmethod
    def astype(a, dtype: str):
        return a.astype(dtype)

    @staticmethod
    def copy(a):
        return a.copy()

    @staticmethod
    def zeros_like(a, dtype: str | None = None):
        return np.zeros(a.shape, dtype=dtype or a.dtype)

    @staticmethod
    def from_numpy(a: np.ndarray, like=None):
        return a

    @staticmethod
    def upper_cholesky_of_inverse(h):
        """U with U^T U = h^-1 (h symmetric positive definite)."""
        inv = np.linalg.inv(np.linalg.cholesky(h))  # L^-1, lower
        hinv = inv.T @ inv
        return np.linalg.cholesky((hinv + hinv.T) / 2).T


class TorchNS:
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch
        self.abs, self.sign, self.where = torch.abs, torch.sign, torch.where
        self.isfinite, self.maximum, self.minimum = torch.isfinite, torch.maximum, torch.minimum
        self.sqrt = torch.sqrt

    def rint(self, a):
        return self.torch.round(a)  # half to even, as NumPy's rint

    def clip(self, a, lo, hi):
        return self.torch.clamp(a, lo, hi)

    def sum(self, a, axis=None, keepdims=False):
        return a.sum() if axis is None else a.sum(dim=axis, keepdim=keepdims)

    def astype(self, a, dtype: str):
        return a.to(getattr(self.torch, dtype))

    def copy(self, a):
        return a.clone()

    def zeros_like(self, a, dtype: str | None = None):
        return self.torch.zeros_like(a, dtype=getattr(self.torch, dtype) if dtype else a.dtype)

    def from_numpy(self, a: np.ndarray, like=None):
        t = self.torch.from_numpy(np.ascontiguousarray(a))
        return t if like is None else t.to(like.device)

    def upper_cholesky_of_inverse(self, h):
        torch = self.torch
        hinv = torch.cholesky_inverse(torch.linalg.cholesky(h))
        return torch.linalg.cholesky(hinv, upper=True)


_TORCH: list = []


def namespace(a: Any):
    if type(a).__module__.split(".")[0] == "torch":
        if not _TORCH:
            _TORCH.append(TorchNS())
        return _TORCH[0]
    return NumpyNS
