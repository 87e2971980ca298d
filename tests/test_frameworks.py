"""gpuquant.core.frameworks: how NumPy, torch and CuPy inputs are read (and refused)."""

import numpy as np
import pytest

import gpuquant as gq


def _negated(torch, values):
    """A torch tensor with the negative bit set (a lazy negation NumPy does not see)."""
    t = torch.complex(torch.zeros(len(values)), torch.tensor(values, dtype=torch.float32))
    neg = t.conj().imag
    assert neg.is_neg()
    return neg


@pytest.mark.parametrize("config", [gq.QuantConfig(), gq.QuantConfig(scheme="int4"),
                                    gq.QuantConfig(symmetric=False)])
def test_a_tensor_with_the_negative_bit_keeps_its_sign(config):
    torch = pytest.importorskip("torch")
    neg = _negated(torch, [float(v) for v in range(1, 9)])
    plain = -torch.arange(1.0, 9.0)
    got, want = gq.quantize(neg, config, backend="numpy"), gq.quantize(plain, config, backend="numpy")
    for a, b in ((got.data, want.data), (got.scale, want.scale), (got.zero_point, want.zero_point)):
        assert torch.equal(a, b)
    assert torch.equal(got.dequantize(), want.dequantize())
    params = gq.calibrate(neg, config)
    assert torch.equal(params.zero_point, gq.calibrate(plain, config).zero_point)
    assert gq.sqnr(plain, neg) == float("inf")  # the metrics read the sign too
    cal = gq.Calibrator(config).update(neg)
    assert np.array_equal(cal.qparams().scale, gq.calibrate(plain.numpy(), config).scale)


def test_negative_bit_qparams_and_parts():
    torch = pytest.importorskip("torch")
    x = torch.arange(-4.0, 4.0)
    config = gq.QuantConfig(symmetric=False)
    neg_scale = _negated(torch, [-0.5])[0]  # reads as +0.5
    assert neg_scale.is_neg()
    zp = torch.tensor(128, dtype=torch.int32)
    given = gq.quantize(x, config, qparams=(torch.tensor(0.5), zp), backend="numpy")
    negated = gq.quantize(x, config, qparams=(neg_scale, zp), backend="numpy")
    assert torch.equal(given.data, negated.data)
    qt = gq.quantize(x)
    neg_scale = _negated(torch, [-float(qt.scale)])  # reads as +scale
    rebuilt = gq.QuantizedTensor(qt.data, neg_scale.reshape(()), qt.zero_point, qt.shape,
                                 qt.dtype, qt.config)
    assert torch.equal(rebuilt.dequantize(), qt.dequantize())


def _masked():
    return np.ma.masked_array(np.array([1.0, 2.0, 1e6], np.float32), mask=[0, 0, 1])


@pytest.mark.parametrize("call,name", [
    (lambda m: gq.quantize(m), "x"),
    (lambda m: gq.calibrate(m), "x"),
    (lambda m: gq.Calibrator().update(m), "batch"),
    (lambda m: gq.quantize(np.ones(3, np.float32), qparams=(m[:1].reshape(()),
                                                            np.zeros((), np.int32))),
     "qparams.scale"),
    (lambda m: gq.sqnr(np.ones(3, np.float32), m), "y"),
    (lambda m: gq.DynamicQuantizer()(m), "x"),
    (lambda m: gq.pack_int4(m.astype(np.int8)), "codes"),
    (lambda m: gq.QuantizedTensor(np.zeros(3, np.int8), m[:1].reshape(()).astype(np.float32),
                                  np.zeros((), np.int32), (3,), "float32", gq.QuantConfig()),
     "scale"),
])
def test_masked_arrays_are_refused_naming_the_argument(call, name):
    with pytest.raises(gq.InvalidDtypeError, match=f"{name} is a masked NumPy array"):
        call(_masked())


def test_masked_array_is_refused_by_save(tmp_path):
    with pytest.raises(gq.InvalidDtypeError, match=r"tensors\['w'\] is a masked NumPy array"):
        gq.save(tmp_path / "m.safetensors", {"w": _masked()})
    assert list(tmp_path.iterdir()) == []


def test_sparse_torch_input_is_refused_naming_the_argument():
    torch = pytest.importorskip("torch")
    dense = torch.ones(4, 4)
    gq.quantize(dense.expand(4, 4))  # a plan for this shape exists before the sparse call
    for call in (gq.quantize, gq.calibrate, gq.Calibrator().update):
        with pytest.raises(gq.InvalidDtypeError, match="layout torch.sparse_coo.*to_dense"):
            call(dense.to_sparse())


def test_meta_tensors_are_refused():
    torch = pytest.importorskip("torch")
    x = torch.ones(4, 4, device="meta")
    for call in (lambda: gq.quantize(x), lambda: gq.calibrate(x), lambda: gq.quantize(
            x, backend="triton"), lambda: gq.DynamicQuantizer()(x)):
        with pytest.raises(gq.BackendUnavailableError, match="meta device"):
            call()


def test_meta_tensors_cannot_be_saved_or_packed(tmp_path):
    torch = pytest.importorskip("torch")
    meta = torch.ones(3, device="meta")
    with pytest.raises(gq.BackendUnavailableError, match="meta device"):
        gq.save(tmp_path / "m.safetensors", {"a": meta})
    with pytest.raises(gq.InvalidDtypeError, match="codes cannot be read as an array"):
        gq.pack_int4(meta.to(torch.int8))
