"""gq.QuantizedTensor (gpuquant/tensor.py): the constructor's checks, sizes, and dequantize's
dtype=, out= and arguments."""

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


def test_unknown_output_dtype():
    qt = gq.quantize(np.ones(4, np.float32))
    with pytest.raises(gq.InvalidDtypeError, match="accepted: float16"):
        qt.dequantize(dtype="int8")
    with pytest.raises(gq.InvalidDtypeError, match="bfloat16"):
        qt.dequantize(dtype="bfloat16")


def test_sizes_and_compression_ratio():
    x = np.ones((64, 256), np.float16)
    qt = gq.quantize(x, gq.QuantConfig.int4_per_group(128))
    assert qt.size_bytes == 64 * 128 + 64 * 2 * 4 + 64 * 2 * 4
    assert qt.compression_ratio == pytest.approx(64 * 256 * 2 / qt.size_bytes)
    qt8 = gq.quantize(x.astype(np.float32), gq.QuantConfig.int8_symmetric())
    assert qt8.size_bytes == 64 * 256 + 8
    assert qt8.compression_ratio == pytest.approx(64 * 256 * 4 / (64 * 256 + 8))


# ------------------------------------------------------------------------------ the constructor
def _parts():
    x = np.linspace(-1, 2, 24, dtype=np.float32).reshape(4, 6)
    qt = gq.quantize(x, gq.QuantConfig.int4_per_group(4, symmetric=False))
    return qt, dict(data=qt.data, scale=qt.scale, zero_point=qt.zero_point, shape=qt.shape,
                    dtype=qt.dtype, config=qt.config)


def test_quantized_tensor_accepts_valid_parts():
    qt, parts = _parts()
    again = gq.QuantizedTensor(**parts)
    np.testing.assert_array_equal(again.dequantize(), qt.dequantize())
    assert again.framework == "numpy" and again.layout == qt.layout


@pytest.mark.parametrize("change,error,match", [
    ({"data": np.zeros((4, 4), np.uint8)}, gq.InvalidShapeError, r"data has shape \(4, 4\)"),
    ({"data": np.zeros((4, 3), np.float32)}, gq.InvalidDtypeError, "data has dtype float32"),
    ({"data": np.zeros((4, 3), np.int8)}, gq.InvalidDtypeError, "needs uint8"),
    ({"scale": np.full((4, 2), np.nan, np.float32)}, gq.InvalidCalibrationError, "scale"),
    ({"scale": np.full((4, 2), 1e-42, np.float32)}, gq.InvalidCalibrationError, "normal"),
    ({"scale": np.ones((4, 2), np.float64)}, gq.InvalidDtypeError, "scale has dtype float64"),
    ({"scale": np.ones((2, 4), np.float32)}, gq.InvalidShapeError, "scale has shape"),
    ({"zero_point": np.full((4, 2), 16, np.int32)}, gq.InvalidCalibrationError, r"\[0, 15\]"),
    ({"zero_point": np.zeros((4, 2), np.int64)}, gq.InvalidDtypeError, "zero_point has dtype"),
    ({"shape": (4, 7)}, gq.InvalidShapeError, "needs"),
    ({"shape": (4, -6)}, gq.InvalidShapeError, "shape="),
    ({"shape": "4x6"}, gq.InvalidShapeError, "shape="),
    ({"dtype": "int8"}, gq.InvalidDtypeError, "dtype='int8'"),
    ({"dtype": np.float32}, gq.InvalidDtypeError, "dtype="),
    ({"config": "int4"}, gq.QuantizationError, "config must be a gq.QuantConfig"),
    ({"data": object()}, gq.InvalidDtypeError, "data has dtype object"),
])
def test_quantized_tensor_validates(change, error, match):
    _, parts = _parts()
    parts.update(change)
    with pytest.raises(error, match=match):
        gq.QuantizedTensor(**parts)


def test_quantized_tensor_parts_stay_together():
    torch = pytest.importorskip("torch")
    _, parts = _parts()
    with pytest.raises(gq.QuantizationError, match="keep the parts together"):
        gq.QuantizedTensor(**dict(parts, scale=torch.from_numpy(parts["scale"])))
    as_torch = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                for k, v in parts.items()}
    qt = gq.QuantizedTensor(**as_torch)  # no info: the framework is read off the data
    assert qt.framework == "torch" and isinstance(qt.dequantize(), torch.Tensor)
    with pytest.raises(gq.QuantizationError, match="info says numpy on cpu"):
        gq.QuantizedTensor(**as_torch, info=_parts()[0]._info)


def test_trusted_constructor_checks_nothing():
    qt, parts = _parts()
    made = gq.quantize(np.ones(qt.shape, np.float32), qt.config)
    bad = gq.QuantizedTensor._trusted(np.zeros(1, np.float64), parts["scale"], parts["zero_point"],
                                      made._plan)
    assert bad.data.dtype == np.float64 and bad.layout is made.layout and bad.shape == qt.shape
