"""gq.QuantizedTensor: dequantize's out= and arguments (issue 19's API errors)."""

import numpy as np
import pytest
from conftest import INTERPRET

import gpuquant as gq


def _qt(framework, backend="numpy"):
    x = np.array([1.0, -2.0, 3.0, 0.5], np.float32)
    if framework == "torch":
        import torch

        x = torch.from_numpy(x)
    return gq.quantize(x, backend=backend)


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_bad_out_buffers_raise_quantization_errors(backend):
    torch = pytest.importorskip("torch")
    if backend == "triton" and not INTERPRET:
        pytest.importorskip("triton")
    qt = _qt("torch", backend)
    cases = [
        ([0.0] * 4, gq.InvalidDtypeError, "out must be an array"),
        (torch.zeros(4, requires_grad=True), gq.QuantizationError, "out requires grad"),
        (torch.empty(4, device="meta"), gq.BackendUnavailableError, "meta device"),
    ]
    for out, error, match in cases:
        with pytest.raises(error, match=match):
            qt.dequantize(out=out, backend=backend)
    with pytest.raises(gq.InvalidDtypeError, match=r"out\[0\].* must be an array"):
        gq.quantize(torch.ones(4), backend=backend, out=([0] * 4, torch.zeros(()), torch.zeros(())))
    good = torch.zeros(4)
    assert qt.dequantize(out=good, backend=backend) is good and torch.equal(good, qt.dequantize())


def test_a_read_only_numpy_out_is_refused():
    qt = _qt("numpy")
    out = np.zeros(4, np.float32)
    out.flags.writeable = False
    with pytest.raises(gq.QuantizationError, match="out is read-only"):
        qt.dequantize(out=out)
    masked = np.ma.masked_array(np.zeros(4, np.float32))
    with pytest.raises(gq.InvalidDtypeError, match="out is a masked NumPy array"):
        qt.dequantize(out=masked)
    assert np.array_equal(out, np.zeros(4, np.float32))


@pytest.mark.parametrize("backend", ["numpy", "triton"])
def test_a_group_longer_than_the_row_is_one_group(backend):
    pytest.importorskip("torch")
    import torch

    x = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 7)).astype(np.float32))
    whole = gq.QuantConfig(scheme="int4", granularity="group", group_size=7)
    for size in (8, 2 ** 40, 2 ** 62):
        qt = gq.quantize(x, gq.QuantConfig(scheme="int4", granularity="group", group_size=size),
                         backend=backend)
        want = gq.quantize(x, whole, backend="numpy")
        assert qt.scale.shape == (4, 1)
        assert torch.equal(qt.data, want.data) and torch.equal(qt.scale, want.scale)
        assert torch.equal(qt.dequantize(), want.dequantize())
