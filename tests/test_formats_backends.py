"""Every float format through the public API on both backends: the Triton kernels (here under
TRITON_INTERPRET=1, on torch CPU tensors) give the NumPy reference's codes, scales and
dequantized values bit for bit, on random data with edge values, and ragged shapes."""

import os
import zlib

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.config import QuantConfig

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

CONFIGS = {
    "fp8 tensor": QuantConfig.fp8_per_tensor(),
    "fp8 e5m2 tensor": QuantConfig.fp8_per_tensor(element="fp8_e5m2"),
    "fp8 channel": QuantConfig.fp8_per_channel(),
    "fp8 token": QuantConfig.fp8_per_token(),
    "fp8 group": QuantConfig.fp8_per_group(group_size=32),
    "fp8 block": QuantConfig.fp8_block(block_shape=(16, 32)),
    "mxfp8 floor": QuantConfig.mxfp8(scale_rule="floor"),
    "mxfp8 rceil": QuantConfig.mxfp8(scale_rule="rceil"),
    "mxfp4 floor": QuantConfig.mxfp4(scale_rule="floor"),
    "mxfp4 rceil": QuantConfig.mxfp4(scale_rule="rceil"),
    "mxfp4 even": QuantConfig.mxfp4(scale_rule="even"),
    "nvfp4": QuantConfig.nvfp4(),
    "nvfp4 modelopt": QuantConfig.nvfp4(global_scale_convention="modelopt"),
    "nf4": QuantConfig.nf4(block_size=64),
}


def _data(seed, shape, edges):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-6, 6, shape))).astype(np.float32)
    if edges:  # zeros, a tie-prone pattern and subnormals in the first rows
        flat = x.reshape(-1)
        flat[:48] = np.float32([0.0, -0.0, 1e-40, -1e-40, 0.25, 0.75, 1.25, 2.5, 5.0, 448.0,
                                449.0, 6.0] * 4)
    return x


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize(("shape", "edges"), [((24, 96), True), ((17, 64), False)])
def test_triton_equals_numpy(name, shape, edges):
    cfg = CONFIGS[name]
    x = _data(zlib.crc32(f"{name}{shape}".encode()), shape, edges)
    ref = gq.quantize(x, cfg)
    got = gq.quantize(torch.from_numpy(x), cfg, backend="triton")
    assert np.array_equal(got.data.numpy(), ref.data), name
    assert np.array_equal(_bytes(got.scale.numpy()), _bytes(ref.scale))
    if ref.global_scale is not None:
        assert np.array_equal(got.global_scale.numpy(), np.asarray(ref.global_scale))
    y = got.dequantize(dtype="float32")
    assert np.array_equal(_bytes(y.numpy()), _bytes(ref.dequantize(dtype="float32")))


def _bytes(a):
    """The bytes of an array (NaN payloads and signed zeros included)."""
    return np.ascontiguousarray(np.asarray(a)).reshape(-1).view(np.uint8)
