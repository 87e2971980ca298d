import os

import numpy as np
import pytest

os.environ.setdefault("GPUQUANT_NUM_THREADS", "2")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def codes_of(qt):
    """Unpacked integer codes of a QuantizedTensor, as int64 NumPy in the original shape."""
    import gpuquant as gq

    data = qt.data
    if hasattr(data, "detach"):
        data = data.detach().cpu().numpy()
    if qt.config.bits == 4:
        k = qt.shape[-1] if qt.shape else 1
        data = gq.unpack_int4(data, k, signed=qt.config.symmetric,
                              nibble_order=qt.config.nibble_order)
    return np.asarray(data).astype(np.int64).reshape(qt.shape)


def as_numpy(a):
    if hasattr(a, "detach"):
        import torch

        a = a.detach().cpu()
        if a.dtype == torch.bfloat16:
            a = a.float()
        return a.numpy()
    return np.asarray(a)
