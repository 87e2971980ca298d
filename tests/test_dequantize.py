"""Dequantize saturates: finite inputs dequantize to finite values at every dtype limit,
the same bits from the NumPy reference and the Triton kernel (docs/ARCHITECTURE.md,
section 3, item 6)."""

import numpy as np
import pytest
from conftest import CUDA, INTERPRET, codes_of

import gpuquant as gq

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not (CUDA or INTERPRET):
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
LIMITS = {"float16": 65504.0, "bfloat16": float(np.uint32(0x7F7F0000).view(np.float32)),
          "float32": float(np.finfo(np.float32).max), "float64": float(np.finfo(np.float32).max)}


def _edges(dtype):
    """Inputs at the dtype's limits: both ends, one end only, and mixed with small values."""
    top = torch.finfo(dtype).max
    rows = [[top, -top, 1.0, 0.0], [top, top / 2, 0.0, 1.0], [-top, -top / 3, -1.0, 0.0],
            [top, -1.0, 0.5, -top / 7]]
    return torch.tensor(rows, dtype=torch.float32).to(dtype)


def _bits(y):
    """The output's bit patterns, to compare exactly (a NaN equals itself here)."""
    y = y.detach().cpu()
    return y.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[y.element_size()])


def _reference(qt, out_dtype):
    """float32(q - zp) * scale per unit, clamped to the output's finite range, rounded."""
    q = codes_of(qt).astype(np.float32)
    layout = qt.layout
    scale = np.asarray(qt.scale.cpu(), np.float32)
    zp = np.asarray(qt.zero_point.cpu(), np.float32)
    with np.errstate(over="ignore"):  # inf, clamped below
        if layout.mode == "scalar":
            y = (q - zp) * scale
        else:  # per row (axis 0)
            y = (q - zp[:, None]) * scale[:, None]
    limit = np.float32(LIMITS[out_dtype])
    y = np.clip(y, -limit, limit)
    t = torch.from_numpy(y)
    return t.to(getattr(torch, out_dtype))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("scheme", ["int4", "int8", "int16"])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_finite_inputs_stay_finite_at_every_dtype_limit(dtype, scheme, symmetric, granularity):
    x = _edges(getattr(torch, dtype)).to(DEVICE)
    kw = {"axis": 0} if granularity == "channel" else {}
    config = gq.QuantConfig(scheme=scheme, symmetric=symmetric, granularity=granularity, **kw)
    qn = gq.quantize(x.cpu(), config, backend="numpy")
    qt = gq.quantize(x, config, backend="triton")
    assert torch.equal(qn.data, qt.data.cpu()) and torch.equal(qn.scale, qt.scale.cpu())
    for out in (None, "float16", "float32", "float64") + (("bfloat16",) if dtype != "float16" else ()):
        want_dtype = out or dtype
        yn, yt = qn.dequantize(dtype=out), qt.dequantize(dtype=out)
        assert str(yn.dtype) == f"torch.{want_dtype}"
        assert torch.isfinite(yn).all() and torch.isfinite(yt.cpu()).all(), (out, yn, yt)
        assert torch.equal(_bits(yn), _bits(yt)), (out, yn, yt)
        assert torch.equal(_bits(yn), _bits(_reference(qn, want_dtype))), (out, yn)


def test_numpy_arrays_saturate_too():
    x = np.array([65504, -65504, 1], np.float16)
    for scheme in ("int4", "int8"):
        y = gq.quantize(x, gq.QuantConfig(scheme=scheme, symmetric=False)).dequantize()
        assert y.dtype == np.float16 and np.isfinite(y).all() and y[1] == -65504
    top = np.finfo(np.float32).max
    for symmetric in (True, False):
        y = gq.quantize(np.array([top, -top, 1], np.float32),
                        gq.QuantConfig(symmetric=symmetric)).dequantize()
        assert np.isfinite(y).all() and y[1] == -top
    # where nothing can overflow, the values are the contract's, unclamped
    small = np.linspace(-3, 3, 13, dtype=np.float32)
    qt = gq.quantize(small, gq.QuantConfig(scheme="int4"))
    q = codes_of(qt).astype(np.float32)
    assert np.array_equal(qt.dequantize(), q * qt.scale)
