"""gpuquant's torch operators and the public API inside torch.compile (CPU; issue 10).

The operators' CPU kernels are the NumPy reference, so every comparison here is
bit for bit against eager gq calls. Compiles are few (Inductor costs seconds).
"""

import os
import subprocess
import sys

import pytest

import gpuquant as gq

torch = pytest.importorskip("torch")
testing = pytest.importorskip("torch._dynamo.testing")

from gpuquant import torch_ops  # noqa: E402

ops = torch.ops.gpuquant
G16 = gq.QuantConfig.int4_per_group(16)
TOKEN = gq.DynamicQuantizer("int8", symmetric=True, per_token=True)
EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def same(a, b):
    for name in ("data", "scale", "zero_point"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


def counter(backend="aot_eager"):
    return testing.CompileCounterWithBackend(backend)


# ------------------------------------------------------------- the operators
OPCHECK_CASES = [  # (shape, dtype, config): ragged groups, odd last axis, shared channels
    ((6, 40), torch.float16, G16),
    ((3, 5, 7), torch.float32, gq.QuantConfig(scheme="int4", granularity="tensor",
                                              nibble_order="low_first")),
    ((4, 3, 10), torch.bfloat16, gq.QuantConfig.int8_per_channel(axis=1)),
    ((9, 12), torch.float32, gq.QuantConfig.int8_per_channel(axis=-1).replace(symmetric=False)),
    ((2, 3, 33), torch.float64, gq.QuantConfig(scheme="int16", granularity="token",
                                               symmetric=False)),
]


@pytest.mark.parametrize("shape,dtype,cfg", OPCHECK_CASES, ids=[c.describe() for *_, c in OPCHECK_CASES])
def test_opcheck_every_operator(shape, dtype, cfg):
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    args = torch_ops.config_args(cfg)
    want = gq.quantize(x, cfg)
    codes, scale, zp = ops.quantize_minmax(x, *args, False)
    same(gq.QuantizedTensor(codes, scale, zp, shape, want.dtype, cfg), want)
    buffers = [torch.empty_like(a) for a in (codes, scale, zp)]
    y = torch.empty(shape, dtype=dtype)
    calls = [(ops.quantize_minmax, (x, *args, False)),
             (ops.quantize_minmax_out, (x, *args, False, *buffers)),
             (ops.quantize_given, (x, scale, zp, *args)),
             (ops.quantize_given_out, (x, scale, zp, *args, torch.empty_like(codes))),
             (ops.dequantize, (codes, scale, zp, list(shape), torch.float32, *args)),
             (ops.dequantize_out, (codes, scale, zp, list(shape), dtype, *args, y))]
    for op, op_args in calls:
        torch.library.opcheck(op, op_args)  # runs on copies of the arguments
        op(*op_args)
    assert torch.equal(buffers[0], want.data) and torch.equal(buffers[1], want.scale)
    assert torch.equal(y, want.dequantize())
    assert torch.equal(ops.quantize_given(x, scale, zp, *args), want.data)


def test_opcheck_per_token_operator():
    x = torch.randn(5, 3, 48, dtype=torch.float16)
    want = TOKEN(x)
    out = [torch.empty_like(a) for a in (want.data, want.scale, want.zero_point)]
    for op, args in ((ops.quantize_per_token, (x, 8, True, True, False)),
                     (ops.quantize_per_token_out, (x, 8, True, True, False, *out))):
        torch.library.opcheck(op, args)
        op(*args)
    same(gq.QuantizedTensor(*ops.quantize_per_token(x, 8, True, True, False), x.shape,
                            "float16", TOKEN.config), want)
    assert torch.equal(out[0], want.data) and torch.equal(out[1], want.scale)


@pytest.mark.parametrize("cfg", [G16, gq.QuantConfig.int8_per_channel(axis=-2),
                                 gq.QuantConfig(granularity="token", ignore_nonfinite=True),
                                 gq.QuantConfig(scheme="int16", symmetric=False)],
                         ids=lambda c: c.describe())
def test_configs_go_in_as_plain_values_and_come_back(cfg):
    args = torch_ops.config_args(cfg)
    assert all(type(a) in (int, bool) for a in args)
    assert torch_ops.config_of(*args, cfg.ignore_nonfinite) == cfg


def test_operators_reject_bad_buffers_and_qparams_by_name():
    x = torch.randn(4, 32)
    args = torch_ops.config_args(G16)
    codes, scale, zp = ops.quantize_minmax(x, *args, False)
    with pytest.raises(gq.InvalidShapeError, match=r"out\[0\]"):
        ops.quantize_minmax_out(x, *args, False, codes[:2], scale, zp)
    with pytest.raises(gq.InvalidDtypeError, match="scale"):
        ops.dequantize(codes, scale.double(), zp, [4, 32], torch.float32, *args)
    with pytest.raises(gq.InvalidShapeError, match="zero_point"):
        ops.quantize_given(x, scale, zp[:1], *args)
    with pytest.raises(gq.InvalidDtypeError, match="int32"):
        ops.quantize_minmax(x.int(), *args, False)


# --------------------------------------------------- the public API, compiled
def per_token_codes(x):
    qt = TOKEN(x)
    return qt.data, qt.scale


def dequantize_matmul(qt, w):
    return qt.dequantize() @ w


def test_per_token_compiles_once_over_the_token_count():
    cnt = counter()
    fn = torch.compile(per_token_codes, backend=cnt, fullgraph=True, dynamic=True)
    for tokens in (16, 33, 7, 16):
        x = torch.randn(tokens, 64)
        for got, want in zip(fn(x), per_token_codes(x)):
            assert got.dtype == want.dtype and torch.equal(got, want)
    assert cnt.frame_count == 1
    assert torch._dynamo.explain(per_token_codes)(torch.randn(8, 64)).graph_break_count == 0


def test_dequantize_matmul_does_not_recompile_for_new_values():
    cfg = gq.QuantConfig.int4_per_group(128)
    cnt = counter()
    fn = torch.compile(dequantize_matmul, backend=cnt, fullgraph=True)
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        qt = gq.quantize(torch.randn(64, 256, generator=g), cfg)
        w = torch.randn(256, 8, generator=g)
        assert torch.equal(fn(qt, w), dequantize_matmul(qt, w))
    assert cnt.frame_count == 1
    assert torch._dynamo.explain(dequantize_matmul)(qt, w).graph_break_count == 0


def test_a_quantized_tensor_made_in_a_graph_is_returned_whole():
    cfg = gq.QuantConfig(scheme="int4", granularity="group", group_size=32, symmetric=True)
    fn = torch.compile(lambda x: gq.quantize(x, cfg), backend=counter(), fullgraph=True)
    x = torch.randn(6, 96, dtype=torch.bfloat16)
    got, want = fn(x), gq.quantize(x, cfg)
    assert isinstance(got, gq.QuantizedTensor)
    same(got, want)
    assert (got.shape, got.dtype, got.config, got.framework, got.device) == \
        (want.shape, want.dtype, want.config, want.framework, want.device)
    assert torch.equal(got.dequantize(), want.dequantize())  # eagerly, without a plan


def test_host_qparams_inside_a_graph_are_applied_eagerly():
    cfg = gq.QuantConfig.int8_per_channel()
    x = torch.randn(8, 40)
    params = gq.calibrate(x.numpy(), cfg)  # NumPy arrays
    fn = torch.compile(lambda x: gq.quantize(x, cfg, qparams=params).data, backend=counter())
    assert torch.equal(fn(x), gq.quantize(x, cfg, qparams=params).data)


def test_out_buffers_and_given_qparams_inside_a_graph():
    cfg = gq.QuantConfig.int8_per_channel()
    x = torch.randn(16, 40)
    want = gq.quantize(x, cfg)

    def fill(x, codes, scale, zero_point, y, again):
        qt = gq.quantize(x, cfg, out=(codes, scale, zero_point))
        gq.quantize(x, cfg, qparams=(qt.scale, qt.zero_point), out=again)
        qt.dequantize(out=y)
        return qt.data

    buffers = [torch.zeros_like(a) for a in (want.data, want.scale, want.zero_point)]
    y, again = torch.zeros(x.shape), torch.zeros_like(want.data)
    cnt = counter()
    data = torch.compile(fill, backend=cnt, fullgraph=True)(x, *buffers, y, again)
    assert torch.equal(data, want.data)
    for got, expected in zip(buffers, (want.data, want.scale, want.zero_point)):
        assert torch.equal(got, expected)
    assert torch.equal(again, want.data) and torch.equal(y, want.dequantize())
    assert cnt.frame_count == 1


def test_bad_out_buffers_raise_inside_a_graph_as_they_do_eagerly():
    x = torch.randn(8, 64, dtype=torch.float16)
    qt = gq.quantize(x, G16)
    codes, scale, zp = (torch.empty_like(a) for a in (qt.data, qt.scale, qt.zero_point))
    quantize = torch.compile(lambda x, *out: gq.quantize(x, G16, out=out).data, backend=counter())
    with pytest.raises(gq.InvalidShapeError, match=r"out\[0\]"):
        quantize(x, codes[:4], scale, zp)
    dequantize = torch.compile(lambda qt, y: qt.dequantize(out=y), backend=counter())
    with pytest.raises(gq.InvalidDtypeError, match="out has dtype"):
        dequantize(qt, torch.empty(x.shape))
    assert torch.equal(dequantize(qt, torch.empty(x.shape, dtype=torch.float16)), qt.dequantize())


def test_bad_arguments_inside_a_graph_raise_the_eager_error():
    x = torch.randn(4, 8)
    bad_axis = gq.QuantConfig.int8_per_channel(axis=5)
    with pytest.raises(gq.InvalidShapeError, match="axis=5"):
        torch.compile(lambda x: gq.quantize(x, bad_axis).data, backend=counter())(x)
    with pytest.raises(gq.InvalidDtypeError, match="int32"):
        torch.compile(lambda x: gq.quantize(x.int()).data, backend=counter())(x)
    qt = gq.quantize(x, G16.replace(group_size=4))
    with pytest.raises(gq.InvalidShapeError, match="scale"):
        torch.compile(lambda x: gq.quantize(x, G16, qparams=(qt.scale, qt.zero_point)).data,
                      backend=counter())(x)
    with pytest.raises(gq.InvalidDtypeError, match="int8"):
        torch.compile(lambda qt: qt.dequantize(dtype="int8"), backend=counter())(qt)


def test_other_calibrations_run_eagerly_at_a_graph_break():
    cfg = gq.QuantConfig.int8_per_channel().replace(calibration=gq.Percentile(1, 99))

    def fn(x):
        return gq.quantize(x * 2, cfg).data.float() + 1

    x = torch.randn(8, 200)
    assert torch.equal(torch.compile(fn, backend=counter())(x), fn(x))
    reasons = [r.reason for r in torch._dynamo.explain(fn)(x).break_reasons]
    assert len(reasons) == 1 and "skipped" in reasons[0], reasons  # the eager gq.quantize
    with pytest.raises(Exception, match="disable"):
        torch.compile(fn, backend=counter(), fullgraph=True)(x)


def test_nan_in_a_compiled_call_raises_on_the_cpu():
    fn = torch.compile(per_token_codes, backend=counter(), fullgraph=True)
    fn(torch.randn(4, 32))
    x = torch.randn(4, 32)
    x[2, 5] = float("nan")
    with pytest.raises(gq.NonFiniteError, match="1 non-finite"):
        fn(x)


def test_a_pending_report_does_not_break_tracing_and_is_raised_by_the_operator():
    from gpuquant.core import nonfinite

    x = torch.randn(4, 64)
    board = nonfinite.board_for(x)  # a CPU board: what a GPU kernel would have written
    slot = nonfinite.new_slot((7, 9), 1)
    board.host[0], board.host[1 + 2 * slot] = 2, 2
    cnt = counter()
    fn = torch.compile(per_token_codes, backend=cnt, fullgraph=True)
    with pytest.raises(gq.NonFiniteError, match=r"\(7, 9\) has 2 non-finite"):
        fn(x)  # traced without reading the board; the operator raises when it runs
    assert cnt.frame_count == 1 and board.host[0] == 0
    assert torch.equal(fn(x)[0], TOKEN(x).data) and cnt.frame_count == 1


def _example(name):
    """An attribute of examples/int8_activations.py."""
    sys.path.insert(0, EXAMPLES)
    try:
        import int8_activations
    finally:
        sys.path.remove(EXAMPLES)
    return getattr(int8_activations, name)


@pytest.mark.slow
def test_inductor_compiles_the_example_block_without_breaks():
    Int8MLP = _example("Int8MLP")  # noqa: N806 - a class
    block = Int8MLP(hidden=256, inner=384, dtype=torch.float32, device="cpu")
    cnt = counter("inductor")
    fn = torch.compile(block.__call__, backend=cnt, fullgraph=True)
    with torch.inference_mode():
        for seed in range(2):
            x = torch.randn(24, 256, generator=torch.Generator().manual_seed(seed))
            assert torch.equal(fn(x), block(x))
    assert cnt.frame_count == 1
    assert torch._dynamo.explain(block.__call__)(x).graph_break_count == 0


@pytest.mark.slow
def test_example_script_runs():
    result = _example("run")(tokens=8, hidden=128, inner=256, repeats=2)  # raises if outputs differ
    assert result["device"] == "cpu" and result["eager_s"] > 0 and result["compiled_s"] > 0


def test_import_gpuquant_without_torch():
    code = ("import sys; sys.modules['torch'] = None  # import torch now fails\n"
            "import numpy as np, gpuquant as gq\n"
            "x = np.array([[-127, 0, 5, 127], [1, -3, 2, 127]], np.float32)  # scales of 1\n"
            "assert (gq.quantize(x, gq.QuantConfig.int8_per_channel()).dequantize() == x).all()\n"
            "assert gq.DynamicQuantizer(per_token=True)(x).scale.shape == (2,)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_given_qparams_for_bfloat16_tensors_on_the_cpu():
    """Regression: the scales were read as bfloat16 bits, x's dtype."""
    x = torch.randn(4, 30).to(torch.bfloat16)
    cfg = gq.QuantConfig.int8_per_channel()
    qt = gq.quantize(x, cfg)
    assert torch.equal(gq.quantize(x, cfg, qparams=(qt.scale, qt.zero_point)).data, qt.data)
