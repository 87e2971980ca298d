"""Exact percentiles of the Triton backend (kernels/select.py) against the NumPy reference.

Bit for bit (lo and hi compared as int32 bits, so that -0.0 and +0.0 differ),
under the interpreter on small and ragged units; every path: the whole-tensor
radix selection, the in-register sort of small units and the per-unit radix
selection of large units (forced on small units by lowering SORT_MAX).
"""

import numpy as np
import pytest
from conftest import CUDA, INTERPRET

import gpuquant as gq
from gpuquant.backends.numpy.backend import NumpyBackend
from gpuquant.core.layout import Layout

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not (CUDA or INTERPRET):
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

from gpuquant.backends.triton import backend as launchers  # noqa: E402
from gpuquant.backends.triton import calibration as triton_calibration  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
F32_MAX = float(np.finfo(np.float32).max)
SUB = 1e-40  # a float32 subnormal

CASES = {
    "one": np.array([[2.5]], np.float32),
    "equal": np.full((3, 7), -1.25, np.float32),
    "zeros": np.array([[0.0, -0.0, -0.0, 0.0, 0.0], [-0.0, -0.0, -0.0, -0.0, -0.0]], np.float32),
    "subnormal": np.array([[SUB, -SUB, 0.0, 2 * SUB, -3 * SUB, 1e-45]], np.float32),
    "dups": np.array([[3.0, 1.0, 3.0, 3.0, 3.0, 3.0, -2.0, 3.0, 9.0]] * 2, np.float32),
    "extremes": np.array([[F32_MAX, -F32_MAX, 1.0, -1.0, 0.5, 2.0]], np.float32),
}
NAN_CASES = {
    "nan": np.array([[np.nan, 1.0, -np.inf, 2.0, 3.0], [np.nan] * 5, [-0.0, np.inf, 4, 4, 1]],
                    np.float32),
}
LAYOUTS = [dict(granularity="tensor"), dict(granularity="token"),
           dict(granularity="channel", axis=-1), dict(granularity="group", group_size=2)]
BOUNDS = [(0.0, 100.0), (12.5, 87.5), (33.0, 66.7)]


def _bits(a):
    a = a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a)
    return np.asarray(a, np.float32).view(np.int32)


def _check(x, kw, lower, upper, ignore):
    layout = Layout.of(x.shape, gq.QuantConfig(**kw))
    want = NumpyBackend().percentile(x.reshape(layout.rows, layout.cols), layout, lower, upper,
                                     ignore)
    xt = torch.from_numpy(x).to(DEVICE)
    got = launchers.TritonBackend().percentile(xt.reshape(layout.rows, layout.cols), layout,
                                               lower, upper, ignore)
    for g, w in zip(got, want):
        assert tuple(g.shape) == layout.unit_shape
        np.testing.assert_array_equal(_bits(g), _bits(w))


@pytest.fixture(params=["sort", "radix"])
def path(request, monkeypatch):
    if request.param == "radix":  # every unit of 2 or more values takes the radix kernel
        monkeypatch.setattr(triton_calibration, "SORT_MAX", 1)
        monkeypatch.setattr(triton_calibration, "_BLOCK", 4)  # several blocks per unit
    else:
        monkeypatch.setattr(triton_calibration, "_BLOCK", 8)
        monkeypatch.setattr(triton_calibration, "_MAX_PROGRAMS", 2)
    return request.param


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kw", LAYOUTS, ids=lambda kw: kw["granularity"])
def test_edge_values_bit_exact(path, case, kw):
    for lower, upper in BOUNDS:
        _check(CASES[case], kw, lower, upper, ignore=False)


@pytest.mark.parametrize("kw", LAYOUTS, ids=lambda kw: kw["granularity"])
def test_nonfinite_ignored_bit_exact(path, kw):
    for lower, upper in BOUNDS:
        _check(NAN_CASES["nan"], kw, lower, upper, ignore=True)


def test_nonfinite_raises_naming_the_unit(path):
    x = torch.from_numpy(NAN_CASES["nan"]).to(DEVICE)
    with pytest.raises(gq.NonFiniteError, match="8 non-finite"):
        gq.calibrate(x, gq.QuantConfig(calibration=gq.Percentile(1, 99)), backend="triton")
    with pytest.raises(gq.NonFiniteError, match="unit 1 "):
        cfg = gq.QuantConfig(granularity="token", calibration=gq.Percentile(1, 99))
        gq.calibrate(_finite_then_bad(), cfg, backend="triton")


def _finite_then_bad():
    x = np.array([[1, 2, 3], [4, np.nan, 6]], np.float32)
    return torch.from_numpy(x).to(DEVICE)


def test_random_ragged_units_bit_exact(path, rng):
    x = (rng.standard_normal((5, 23)) * 4).astype(np.float16).astype(np.float32)  # many ties
    for kw in LAYOUTS + [dict(granularity="group", group_size=6),
                         dict(granularity="channel", axis=0)]:
        _check(x, kw, 0.1, 99.9, ignore=False)
    _check(x.reshape(5, 23, 1), dict(granularity="channel", axis=1), 5.0, 95.0, ignore=False)


def test_float16_input_widens_exactly(rng):
    x = torch.from_numpy(rng.standard_normal((4, 33)).astype(np.float16)).to(DEVICE)
    for kw in (dict(granularity="tensor"), dict(granularity="token")):
        cfg = gq.QuantConfig(symmetric=False, calibration=gq.Percentile(2, 98), **kw)
        got = gq.calibrate(x, cfg, backend="triton")
        want = gq.calibrate(x.cpu(), cfg, backend="numpy")
        assert torch.equal(got.scale.cpu(), want.scale) and torch.equal(
            got.zero_point.cpu(), want.zero_point)
