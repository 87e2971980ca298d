"""The float formats' torch operators (gpuquant.formats.ops) and gq.quantize / qt.dequantize of
FP8, MX, NVFP4 and NF4 inside torch.compile (CPU; issue 21).

The operators' CPU kernels are the NumPy reference, so every comparison here is bit for bit
against eager gq calls.
"""

import pytest

import gpuquant as gq

torch = pytest.importorskip("torch")
testing = pytest.importorskip("torch._dynamo.testing")

from gpuquant.formats import ops as float_ops  # noqa: E402

ops = torch.ops.gpuquant
Q = gq.QuantConfig
FP8_TOKEN = Q.fp8_per_token()
NVFP4 = Q.nvfp4()
CASES = [  # (shape, dtype, config): ragged groups and blocks, odd last axes, every format
    ((3, 5, 7), torch.float32, Q.fp8_per_tensor()),
    ((6, 40), torch.bfloat16, Q.fp8_per_channel("fp8_e5m2")),
    ((2, 3, 33), torch.float16, FP8_TOKEN),
    ((4, 70), torch.float64, Q.fp8_per_group(32)),
    ((40, 50), torch.float32, Q.fp8_block((16, 16))),
    ((4, 64), torch.bfloat16, Q.mxfp8()),
    ((3, 70), torch.float32, Q.mxfp4("rceil")),
    ((2, 45), torch.float16, Q.mxfp4("even")),
    ((5, 48), torch.float16, NVFP4),
    ((4, 40), torch.float32, Q.nvfp4("modelopt")),
    ((7, 30), torch.float32, Q.nf4()),
]
IDS = [c.describe() for *_, c in CASES]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def counter():
    return testing.CompileCounterWithBackend("aot_eager")


def sample(shape, dtype, seed=0):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3).to(dtype)


def same(a, b):
    for name in ("data", "scale", "global_scale"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        assert x is None or (x.dtype == y.dtype and torch.equal(x, y)), name


# ------------------------------------------------------------- the operators
@pytest.mark.parametrize("shape,dtype,cfg", CASES, ids=IDS)
def test_opcheck_every_float_operator(shape, dtype, cfg):
    x = sample(shape, dtype)
    args = float_ops.config_args(cfg)
    want = gq.quantize(x, cfg)
    codes, scale, gs = ops.quantize_float(x, *args)
    assert torch.equal(codes, want.data) and torch.equal(scale, want.scale)
    assert codes.dtype == want.data.dtype and scale.dtype == want.scale.dtype
    if want.global_scale is None:
        assert gs.shape == (0,)
    else:
        assert gs.shape == () and torch.equal(gs, want.global_scale)
    given = gs if want.global_scale is not None else None
    buffers = [torch.zeros_like(codes), torch.zeros_like(scale),
               None if given is None else torch.zeros_like(gs)]
    y = torch.zeros(shape, dtype=dtype)
    calls = [(ops.quantize_float, (x, *args)),
             (ops.quantize_float_out, (x, *args, *buffers)),
             (ops.dequantize_float, (codes, scale, given, list(shape), torch.float32, *args)),
             (ops.dequantize_float_out, (codes, scale, given, list(shape), dtype, *args, y))]
    for op, op_args in calls:
        torch.library.opcheck(op, op_args)  # runs on copies of the arguments
        op(*op_args)
    assert torch.equal(buffers[0], want.data) and torch.equal(buffers[1], want.scale)
    assert given is None or torch.equal(buffers[2], want.global_scale)
    assert torch.equal(y, want.dequantize())
    y32 = ops.dequantize_float(codes, scale, given, list(shape), torch.float32, *args)
    assert torch.equal(y32, want.dequantize("float32"))


@pytest.mark.parametrize("cfg", [c for *_, c in CASES] + [Q.mxfp8("even", "fp8_e5m2"),
                                                         Q.fp8_per_channel(axis=-1)],
                         ids=lambda c: c.describe())
def test_float_configs_go_in_as_ints_and_come_back(cfg):
    args = float_ops.config_args(cfg)
    assert len(args) == 9 and all(type(a) is int for a in args)
    assert float_ops.config_of(*args) == cfg


def test_float_operators_reject_bad_buffers_and_parts_by_name():
    x = sample((4, 32), torch.float32)
    fp8, nv = float_ops.config_args(FP8_TOKEN), float_ops.config_args(NVFP4)
    codes, scale, _ = ops.quantize_float(x, *fp8)
    with pytest.raises(gq.InvalidShapeError, match=r"out\[0\]"):
        ops.quantize_float_out(x, *fp8, codes[:2], scale, None)
    with pytest.raises(gq.InvalidDtypeError, match=r"out\[1\]"):
        ops.quantize_float_out(x, *fp8, codes, scale.double(), None)
    with pytest.raises(gq.QuantizationError, match="global_scale"):
        ops.quantize_float_out(x, *fp8, codes, scale, torch.empty(()))
    nv_codes, nv_scale, nv_gs = ops.quantize_float(x, *nv)
    with pytest.raises(gq.QuantizationError, match="global_scale"):
        ops.quantize_float_out(x, *nv, nv_codes, nv_scale, None)
    with pytest.raises(gq.InvalidDtypeError, match="scale"):
        ops.dequantize_float(codes, scale.double(), None, [4, 32], torch.float32, *fp8)
    with pytest.raises(gq.InvalidShapeError, match="data"):
        ops.dequantize_float(codes[:, :16], scale, None, [4, 32], torch.float32, *fp8)
    with pytest.raises(gq.QuantizationError, match="global_scale"):
        ops.dequantize_float(codes, scale, nv_gs, [4, 32], torch.float32, *fp8)
    with pytest.raises(gq.InvalidDtypeError, match="out has dtype"):
        ops.dequantize_float_out(nv_codes, nv_scale, nv_gs, [4, 32], torch.float32, *nv,
                                 torch.empty(4, 32, dtype=torch.float16))
    with pytest.raises(gq.InvalidDtypeError, match="int32"):
        ops.quantize_float(x.int(), *fp8)


# --------------------------------------------------- the public API, compiled
def fp8_and_nvfp4(x):
    a, b = gq.quantize(x, FP8_TOKEN), gq.quantize(x, NVFP4)
    return a.data, a.scale, b.data, b.scale, b.global_scale, b.dequantize()


def test_fp8_and_nvfp4_compile_once_without_graph_breaks():
    cnt = counter()
    fn = torch.compile(fp8_and_nvfp4, backend=cnt, fullgraph=True)
    for seed in range(3):  # new values: no recompilation
        x = sample((8, 64), torch.bfloat16, seed)
        for got, want in zip(fn(x), fp8_and_nvfp4(x)):
            assert got.dtype == want.dtype and torch.equal(got, want)
    assert cnt.frame_count == 1
    explained = torch._dynamo.explain(fp8_and_nvfp4)(sample((8, 64), torch.bfloat16))
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    assert explained.op_count >= 3  # the operators are in the graph, not run at tracing


def test_a_float_quantized_tensor_made_in_a_graph_is_returned_whole():
    cfg = Q.mxfp4()
    fn = torch.compile(lambda x: gq.quantize(x, cfg), backend=counter(), fullgraph=True)
    x = sample((6, 96), torch.float16)
    got, want = fn(x), gq.quantize(x, cfg)
    assert isinstance(got, gq.QuantizedTensor)
    same(got, want)
    assert (got.shape, got.dtype, got.config, got.framework, got.device) == \
        (want.shape, want.dtype, want.config, want.framework, want.device)
    assert torch.equal(got.dequantize(), want.dequantize())  # eagerly


def test_float_dequantize_matmul_compiles_once():
    cnt = counter()

    def dequantize_matmul(qt, w):
        return qt.dequantize("float32") @ w

    fn = torch.compile(dequantize_matmul, backend=cnt, fullgraph=True)
    for seed in range(3):
        qt = gq.quantize(sample((16, 128), torch.float32, seed), Q.nf4())
        w = sample((128, 8), torch.float32, seed + 10)
        assert torch.equal(fn(qt, w), dequantize_matmul(qt, w))
    assert cnt.frame_count == 1


def test_float_out_buffers_inside_a_graph():
    x = sample((16, 64), torch.float32)
    want = gq.quantize(x, NVFP4)
    args = float_ops.config_args(NVFP4)

    def fill(x, codes, scale, global_scale, y, qt, y2):
        ops.quantize_float_out(x, *args, codes, scale, global_scale)
        ops.dequantize_float_out(codes, scale, global_scale, [16, 64], torch.float32, *args, y)
        qt.dequantize(out=y2)

    buffers = [torch.zeros_like(a) for a in (want.data, want.scale, want.global_scale)]
    y, y2 = torch.zeros(x.shape), torch.zeros(x.shape)
    cnt = counter()
    torch.compile(fill, backend=cnt, fullgraph=True)(x, *buffers, y, want, y2)
    for got, expected in zip(buffers, (want.data, want.scale, want.global_scale)):
        assert torch.equal(got, expected)
    assert torch.equal(y, want.dequantize()) and torch.equal(y2, y) and cnt.frame_count == 1
    with pytest.raises(gq.UnsupportedSchemeError, match="out="):  # eagerly, at a graph break
        torch.compile(lambda x, *out: gq.quantize(x, NVFP4, out=out).data,
                      backend=counter())(x, *buffers)


def test_given_fp8_scales_and_bad_float_calls_run_eagerly_inside_a_graph():
    cfg = Q.fp8_per_token()
    x = sample((4, 32), torch.float32)
    params = (torch.full((4,), 0.05), torch.zeros(4, dtype=torch.int32))
    fn = torch.compile(lambda x: gq.quantize(x, cfg, qparams=params).data, backend=counter())
    assert torch.equal(fn(x), gq.quantize(x, cfg, qparams=params).data)
    with pytest.raises(gq.InvalidShapeError, match="block"):
        torch.compile(lambda x: gq.quantize(x, Q.fp8_block()).data, backend=counter())(x[0])
    qt = gq.quantize(x, cfg)
    with pytest.raises(gq.InvalidDtypeError, match="int8"):
        torch.compile(lambda qt: qt.dequantize(dtype="int8"), backend=counter())(qt)
