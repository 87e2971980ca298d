"""The Backend protocol's runner contract, the same on both backends (gpuquant.backends):
runners take the caller's arrays, return arrays of that framework and write ``out=`` buffers."""

import pathlib
import re

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.backends import _make
from gpuquant.core.layout import Layout

torch = pytest.importorskip("torch")
ROOT = pathlib.Path(__file__).resolve().parents[1]
CFG = gq.QuantConfig.int4_per_group(16)


def backends():
    names = ["numpy"]
    try:
        import triton  # noqa: F401

        names.append("triton")
    except ImportError:
        pass
    return names


@pytest.mark.parametrize("name", backends())
def test_runners_write_the_callers_buffers_and_return_them(name):
    be = _make(name)
    x = torch.randn(6, 48, generator=torch.Generator().manual_seed(3))
    layout = Layout.of(tuple(x.shape), CFG)
    want = gq.quantize(x, CFG, backend="numpy")
    quantize = be.plan_quantize(layout, CFG, x)
    fresh = quantize(x)
    assert all(isinstance(a, torch.Tensor) for a in fresh)
    out = tuple(torch.empty_like(a) for a in (want.data, want.scale, want.zero_point))
    got = quantize(x, out)
    assert all(a is b for a, b in zip(got, out))
    for a, b, c in zip(out, fresh, (want.data, want.scale, want.zero_point)):
        assert torch.equal(a, c) and torch.equal(b, c)
    codes = torch.empty_like(want.data)
    given = be.plan_quantize_given(layout, CFG, x)
    assert given(x, want.scale, want.zero_point, codes) is codes and torch.equal(codes, want.data)
    y = torch.empty(x.shape)
    dequantize = be.plan_dequantize(layout, CFG, want.data, "float32")
    assert dequantize(want.data, want.scale, want.zero_point, y) is y
    assert torch.equal(y, want.dequantize())
    with pytest.raises(gq.InvalidDtypeError, match="out"):
        dequantize(want.data, want.scale, want.zero_point, torch.empty(x.shape, dtype=torch.float64))


def test_numpy_runners_give_numpy_for_numpy_input():
    be = _make("numpy")
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)
    layout = Layout.of(x.shape, CFG)
    codes, scale, zero_point = be.plan_quantize(layout, CFG, x)(x)
    assert all(type(a) is np.ndarray for a in (codes, scale, zero_point))
    out = np.empty_like(codes)
    assert be.plan_quantize_given(layout, CFG, x)(x, scale, zero_point, out) is out
    assert np.array_equal(out, codes)


def test_no_caller_asks_which_backend_it_has():
    """Outside gpuquant/backends no code branches on a backend's name."""
    asking = re.compile(r"""\.name\s*[!=]=\s*["'](numpy|triton)["']|backend\s*==\s*["']numpy["']""")
    found = [f"{path.relative_to(ROOT)}:{n}" for path in (ROOT / "gpuquant").rglob("*.py")
             if "backends" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if asking.search(line)]
    assert not found, found
