"""The Triton backend against the NumPy reference, bit for bit.

Without a GPU these run the kernels under TRITON_INTERPRET=1 on torch CPU
tensors (see conftest.py); on a GPU machine the same tests run on CUDA.
"""

import numpy as np
import pytest
from conftest import CUDA, INTERPRET, codes_of

import gpuquant as gq

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not (CUDA or INTERPRET):
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"
DTYPES = [torch.float16, torch.bfloat16, torch.float32]
LAYOUTS = [
    ((5, 45), dict(granularity="group", group_size=16)),   # short last group, odd row length
    ((3, 40), dict(granularity="group", group_size=5)),    # odd group size: two-pass path
    ((7, 33), dict(granularity="channel", axis=0)),        # rows are units: fused
    ((6, 20), dict(granularity="channel", axis=-1)),       # column reduction
    ((2, 3, 4, 9), dict(granularity="channel", axis=1)),   # rows share channels
    ((4, 37), dict(granularity="tensor")),
    ((2, 3, 33), dict(granularity="token")),
    ((1, 31), dict(granularity="group", group_size=8)),    # one row
    ((31, 1), dict(granularity="channel", axis=0)),        # one column
]


def tensor(rng, shape, dtype, scale=3.0):
    x = torch.from_numpy((rng.standard_normal(shape) * scale).astype(np.float32))
    return x.to(dtype=dtype, device=DEVICE)


def assert_same(a, b):
    """Two QuantizedTensors with identical codes, scales and zero points."""
    for name in ("data", "scale", "zero_point"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        assert torch.equal(x.cpu(), y.cpu()), name


def reference(x, cfg, **kw):
    return gq.quantize(x.cpu(), cfg, backend="numpy", **kw)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("shape,kw", LAYOUTS)
@pytest.mark.parametrize("scheme", ["int4", "int8", "int16"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_calibrate_quantize_matches_reference(rng, shape, kw, scheme, symmetric):
    x = tensor(rng, shape, torch.float32)
    cfg = gq.QuantConfig(scheme=scheme, symmetric=symmetric, **kw)
    got = gq.quantize(x, cfg, backend="triton")
    want = reference(x, cfg)
    assert_same(got, want)
    for dtype in ("float32", "float16", "bfloat16"):
        assert torch.equal(got.dequantize(dtype=dtype).cpu(), want.dequantize(dtype=dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("order", ["high_first", "low_first"])
def test_input_dtypes_and_nibble_orders(rng, dtype, order):
    x = tensor(rng, (6, 50), dtype)
    for kw in [dict(granularity="group", group_size=16), dict(granularity="channel", axis=-1)]:
        cfg = gq.QuantConfig(scheme="int4", symmetric=False, nibble_order=order, **kw)
        got = gq.quantize(x, cfg, backend="triton")
        assert_same(got, reference(x, cfg))
        assert got.dequantize().dtype == dtype


@pytest.mark.parametrize("shape,kw", LAYOUTS[:6])
def test_given_qparams_and_percentile(rng, shape, kw):
    x = tensor(rng, shape, torch.float16)
    cfg = gq.QuantConfig(scheme="int4", symmetric=False, calibration=gq.Percentile(5, 95), **kw)
    params = gq.calibrate(x, cfg, backend="triton")
    ref_params = gq.calibrate(x.cpu(), cfg, backend="numpy")
    assert torch.equal(params.scale.cpu(), ref_params.scale)
    assert torch.equal(params.zero_point.cpu(), ref_params.zero_point)
    got = gq.quantize(x, cfg, backend="triton")  # percentile, then the tile kernel
    assert_same(got, reference(x, cfg))


def test_edge_values_through_the_kernel():
    tiny = float(np.finfo(np.float32).tiny)
    cases = [  # (values, scale, zero point, config, expected codes)
        ([0.5, 1.5, 2.5, -0.5, -2.5, float(np.nextafter(np.float32(0.5), 0))], 1.0, 0,
         gq.QuantConfig.int8_symmetric(), [0, 2, 2, 0, -2, 0]),
        ([127.5, 128, -128.5, 1e30, -1e30], 1.0, 0, gq.QuantConfig.int8_symmetric(),
         [127, 127, -128, 127, -128]),
        ([float("nan"), float("inf"), float("-inf"), 1.0], 0.5, 10,
         gq.QuantConfig.int8_asymmetric(), [10, 255, 0, 12]),
        ([0.75 * tiny, 0.25 * tiny, -0.6 * tiny], tiny, 0, gq.QuantConfig.int8_symmetric(),
         [1, 0, -1]),
    ]
    for values, scale, zp, cfg, expected in cases:
        x = torch.tensor(values, dtype=torch.float32, device=DEVICE)
        qp = (torch.tensor(scale, dtype=torch.float32, device=DEVICE),
              torch.tensor(zp, dtype=torch.int32, device=DEVICE))
        got = gq.quantize(x, cfg, qparams=qp, backend="triton")
        assert codes_of(got).tolist() == expected


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_qparams_edge_ranges_match_reference():
    rows = [[0.0, 0.0], [5.0, 5.0], [-3.0, -3.0], [0.5, 1.5], [1e-45, -3e-45]]
    x = torch.tensor(rows, dtype=torch.float32, device=DEVICE)
    for sym in (True, False):
        cfg = gq.QuantConfig(granularity="channel", symmetric=sym)
        assert_same(gq.quantize(x, cfg, backend="triton"), reference(x, cfg))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("sym", [True, False])
def test_ranges_wider_than_float32_match_reference(sym):
    fmax = float(np.finfo(np.float32).max)
    x = torch.tensor([[fmax, -fmax], [3e38, -3e38], [1.0, 2.0]], dtype=torch.float32,
                     device=DEVICE)
    cfg = gq.QuantConfig(granularity="channel", symmetric=sym)
    assert_same(gq.quantize(x, cfg, backend="triton"), reference(x, cfg))


def test_nonfinite_is_reported_and_can_be_ignored(rng):
    x = tensor(rng, (4, 32), torch.float32)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    cfg = gq.QuantConfig.int4_per_group(16)
    with pytest.raises(gq.NonFiniteError, match="2 non-finite"):
        # the interpreter reports at once; a GPU reports without waiting, at the latest here
        gq.quantize(x, cfg, backend="triton").check_finite()
    ignore = cfg.replace(ignore_nonfinite=True)
    for c in (ignore, gq.QuantConfig(ignore_nonfinite=True),
              ignore.replace(calibration=gq.Percentile(1, 99))):
        assert_same(gq.quantize(x, c, backend="triton"), reference(x, c))


def test_non_contiguous_input_and_dynamic_per_token(rng):
    base = tensor(rng, (40, 30), torch.float32)
    x = base.t()[::3]
    cfg = gq.QuantConfig.int8_per_channel(axis=1)
    assert_same(gq.quantize(x, cfg, backend="triton"), reference(x.contiguous(), cfg))
    acts = tensor(rng, (2, 5, 64), torch.bfloat16)
    dq = gq.DynamicQuantizer("int8", per_token=True, backend="triton")
    got = dq(acts)
    assert tuple(got.scale.shape) == (2, 5)
    assert_same(got, gq.DynamicQuantizer("int8", per_token=True, backend="numpy")(acts.cpu()))


def test_zero_d_and_one_element(rng):
    for value in (torch.tensor(-2.5), torch.tensor([7.0])):
        x = value.to(DEVICE)
        for cfg in (gq.QuantConfig.int4_symmetric(), gq.QuantConfig.int8_asymmetric()):
            assert_same(gq.quantize(x, cfg, backend="triton"), reference(x, cfg))


@pytest.mark.parametrize("kw", [dict(granularity="tensor"), dict(granularity="channel", axis=0),
                                dict(granularity="channel", axis=-1),
                                dict(granularity="group", group_size=32)])
@pytest.mark.parametrize("cal", [gq.Entropy(256), gq.MSE(12)], ids=str)
def test_entropy_and_mse_match_reference(rng, kw, cal):
    x = tensor(rng, (6, 96), torch.float16)
    x[1, 5] = 30.0
    for scheme in ("int4", "int8"):
        cfg = gq.QuantConfig(scheme=scheme, symmetric=scheme == "int8", calibration=cal, **kw)
        assert_same(gq.quantize(x, cfg, backend="triton"), reference(x, cfg))


def test_mse_with_ignored_nonfinite_matches_reference(rng):
    x = tensor(rng, (4, 64), torch.float32)
    x[0, 3] = float("nan")
    x[2, 9] = float("-inf")
    cfg = gq.QuantConfig(granularity="channel", calibration="mse", ignore_nonfinite=True)
    assert_same(gq.quantize(x, cfg, backend="triton"), reference(x, cfg))
    ent = cfg.replace(calibration="entropy")
    assert_same(gq.quantize(x, ent, backend="triton"), reference(x, ent))


def test_streamed_calibrator_matches_reference(rng):
    batches = [tensor(rng, (32, 24), torch.float32) * (i + 1) for i in range(3)]
    for cal in ("minmax", gq.Percentile(1, 99), gq.Entropy(), gq.MSE(16)):
        cfg = gq.QuantConfig(granularity="channel", axis=-1, calibration=cal)
        gpu, cpu = gq.Calibrator(cfg, backend="triton"), gq.Calibrator(cfg, backend="numpy")
        for b in batches:
            gpu.update(b)
            cpu.update(b.cpu())
        for a, b in zip(gpu.qparams(), cpu.qparams()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_whole_tensor_percentile_by_radix_selection(rng, monkeypatch):
    from gpuquant.backends.triton import calibration as triton_calibration

    # several programs, each adding several blocks to the shared histograms
    monkeypatch.setattr(triton_calibration, "_BLOCK", 256)
    monkeypatch.setattr(triton_calibration, "_MAX_PROGRAMS", 3)
    x = tensor(rng, (50, 97), torch.float32)
    x[0, :7] = 0.0
    x[1, :5] = -0.0
    x[2, :9] = x[2, 10]  # duplicates
    x[3, 0] = -float(np.finfo(np.float32).max)
    for p in (gq.Percentile(0, 100), gq.Percentile(0.01, 99.99), gq.Percentile(37.5, 62.5)):
        cfg = gq.QuantConfig(symmetric=False, calibration=p)
        assert_same(gq.quantize(x, cfg, backend="triton"), reference(x, cfg))
    x[4, 4] = float("nan")
    x[5, 5] = float("inf")
    cfg = gq.QuantConfig(calibration=gq.Percentile(1, 99), ignore_nonfinite=True)
    assert_same(gq.quantize(x, cfg, backend="triton"), reference(x, cfg))
    with pytest.raises(gq.NonFiniteError):
        gq.calibrate(x, cfg.replace(ignore_nonfinite=False), backend="triton")


def test_nonfinite_report_names_the_unit(rng):
    x = tensor(rng, (4, 6, 8), torch.float32)
    x[1, 2, 7] = float("nan")  # channel 2 on axis 1 (rows share channels), channel 7 on axis -1
    for axis, unit in ((1, 2), (-1, 7), (0, 1)):
        with pytest.raises(gq.NonFiniteError, match=f"1 non-finite.*unit {unit} "):
            # the interpreter raises in quantize; a GPU at the latest in check_finite()
            gq.quantize(x, gq.QuantConfig.int8_per_channel(axis=axis),
                        backend="triton").check_finite()


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=st.lists(st.integers(1, 24), min_size=1, max_size=3),
       scheme=st.sampled_from(["int4", "int8", "int16"]), symmetric=st.booleans(),
       gran=st.sampled_from(["tensor", "channel", "group", "token"]),
       group_size=st.integers(1, 20), axis=st.integers(-3, 2),
       order=st.sampled_from(["high_first", "low_first"]),
       dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
       seed=st.integers(0, 2**16))
def test_random_configs_match_reference(shape, scheme, symmetric, gran, group_size, axis, order,
                                        dtype, seed):
    kw = {"granularity": gran, "nibble_order": order}
    if gran == "group":
        kw["group_size"] = group_size
    if gran == "channel":
        kw["axis"] = axis % len(shape)
    cfg = gq.QuantConfig(scheme=scheme, symmetric=symmetric, **kw)
    x = tensor(np.random.default_rng(seed), tuple(shape), dtype)
    got = gq.quantize(x, cfg, backend="triton")
    assert_same(got, reference(x, cfg))
    assert torch.equal(got.dequantize(dtype="float32").cpu(), reference(x, cfg).dequantize(
        dtype="float32"))


@pytest.mark.parametrize("kw", [dict(granularity="group", group_size=8),
                                dict(granularity="token"), dict(granularity="channel", axis=0)])
def test_fused_paths_on_transposed_and_sliced_inputs(rng, kw):
    """Views whose 2-D form is a copy must not be read as if they were contiguous."""
    base = tensor(rng, (24, 40), torch.float16)
    for x in (base.t(), base[:, 8:], base.t()[::2]):
        cfg = gq.QuantConfig(scheme="int4", **kw)
        assert_same(gq.quantize(x, cfg, backend="triton"), reference(x.contiguous(), cfg))
