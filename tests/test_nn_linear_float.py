"""gq.nn.QuantizedLinear over the float formats (FP8, MXFP8, MXFP4, NVFP4, NF4 with and without
double quantization): forward equals F.linear of the dequantized weight, the buffers are the
QuantizedTensor's parts, state_dict round trips across formats, torch.compile(fullgraph=True)
without graph breaks, and activations="fp8" (vLLM's dynamic per-token FP8, torch._scaled_mm)."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from linear_cases import fresh_dynamo, linear  # noqa: E402, F401 (fresh_dynamo: an autouse fixture)
from torch._dynamo import testing  # noqa: E402

import gpuquant as gq  # noqa: E402
from gpuquant.nn import QuantizedLinear  # noqa: E402

C = gq.QuantConfig
FLOATS = [C.fp8_per_tensor(), C.fp8_per_channel(), C.fp8_per_group(16), C.fp8_block((16, 32)),
          C.fp8_per_channel("fp8_e5m2"), C.mxfp8(), C.mxfp4("rceil"), C.nvfp4(),
          C.nvfp4("modelopt"), C.nf4(), C.nf4(double_quant=True)]
EXTRAS = {"e4m3": ("global_scale",), "dq": ("nested_absmax", "nested_offset")}


def buffers_of(cfg):
    key = "e4m3" if cfg.scale_format == "e4m3" else "dq" if cfg.double_quant else None
    return ("qdata", "scale", *EXTRAS.get(key, ()))


@pytest.mark.parametrize("cfg", FLOATS, ids=[c.describe() for c in FLOATS])
def test_forward_equals_linear_of_the_dequantized_weight(cfg):
    lin = linear()
    q = QuantizedLinear.from_linear(lin, cfg)
    assert tuple(name for name, _ in q.named_buffers()) == buffers_of(cfg)
    want_qt = gq.quantize(lin.weight.detach(), cfg)
    qt = q.qweight
    assert qt.config == cfg and qt.zero_point is None and qt.shape == (48, 64)
    for name in buffers_of(cfg):  # the QuantizedTensor is over the buffers: no copy
        part = getattr(qt, "data" if name == "qdata" else name)
        assert part is getattr(q, name)
        assert torch.equal(part, getattr(want_qt, "data" if name == "qdata" else name))
    x = torch.randn(3, 5, 64)
    want = F.linear(x, want_qt.dequantize(), lin.bias)
    assert torch.equal(q(x), want)
    assert torch.equal(q(x), want)  # the reused workspace gives the same again
    assert torch.equal(q.dequantized_weight(torch.float16), want_qt.dequantize("float16"))


@pytest.mark.parametrize("src,dst", [(FLOATS[7], C.int4_per_group(32, symmetric=False)),
                                     (C.int8_per_channel(), FLOATS[10]),
                                     (FLOATS[10], FLOATS[7]), (FLOATS[1], FLOATS[6])])
def test_state_dict_round_trip_across_formats(src, dst):
    lin = linear()
    a, b = QuantizedLinear.from_linear(lin, src), QuantizedLinear.from_linear(lin, dst)
    b.load_state_dict(a.state_dict())  # strict: the same keys after the load
    assert b.config == src and set(b.state_dict()) == set(a.state_dict())
    x = torch.randn(2, 64)
    assert torch.equal(b(x), a(x))
    for name, t in a.named_buffers():
        assert torch.equal(getattr(b, name), t) and getattr(b, name).dtype == t.dtype


@pytest.mark.parametrize("cfg", [FLOATS[1], FLOATS[7], FLOATS[10]], ids=["fp8", "nvfp4", "nf4dq"])
def test_half_keeps_the_float32_parts(cfg):
    q = QuantizedLinear.from_linear(linear(), cfg)
    before = {name: t.clone() for name, t in q.named_buffers()}
    q = q.to(torch.bfloat16)
    for name, t in before.items():
        assert getattr(q, name).dtype == t.dtype and torch.equal(getattr(q, name), t)
    x = torch.randn(2, 64).to(torch.bfloat16)
    want = F.linear(x, q.qweight.dequantize(dtype="bfloat16"), q.bias)
    assert q(x).dtype == torch.bfloat16 and torch.equal(q(x), want)


def compiled_equal(model, x):
    """torch.compile(fullgraph=True) with 0 graph breaks, one frame, the eager result."""
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    torch._dynamo.reset()
    cnt = testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=cnt, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
    assert cnt.frame_count == 1


@pytest.mark.parametrize("cfg", [FLOATS[1], FLOATS[6], FLOATS[7], FLOATS[9]],
                         ids=["fp8", "mxfp4", "nvfp4", "nf4"])
def test_float_formats_compile_fullgraph(cfg):
    model = torch.nn.Sequential(QuantizedLinear.from_linear(linear(), cfg), torch.nn.ReLU(),
                                QuantizedLinear.from_linear(linear(k=48, n=16, seed=1), cfg))
    compiled_equal(model.eval(), torch.randn(24, 64))


def test_double_quant_nf4_is_a_graph_break():
    """No operator dequantizes a double-quantized NF4: eager in eager mode, and under
    torch.compile a graph break (fullgraph=True refuses it; without it, the same values)."""
    q = QuantizedLinear.from_linear(linear(), FLOATS[10]).eval()
    x = torch.randn(4, 64)
    with pytest.raises(torch._dynamo.exc.Unsupported, match="double-quantized NF4"):
        torch.compile(q, backend="aot_eager", fullgraph=True)(x)
    torch._dynamo.reset()
    with torch.no_grad():
        assert torch.equal(torch.compile(q, backend="aot_eager")(x), q(x))


# -------------------------------------------------------------- FP8 activations
def fp8_parts(q, x2):
    """float32 dequantized activations (vLLM's per-token FP8) and weight."""
    qx = gq.DynamicQuantizer("fp8_e4m3", per_token=True)(x2)
    return qx.dequantize("float32"), q.qweight.dequantize("float32")


@pytest.mark.parametrize("cfg", [C.fp8_per_channel(), C.fp8_per_tensor()], ids=["chan", "tensor"])
def test_fp8_activations_fallback_is_linear_of_the_dequantized_parts(cfg):
    lin = linear()
    q = QuantizedLinear.from_linear(lin, cfg, activations="fp8")
    assert not q._scaled_mm_applies(torch.randn(2, 64))  # CPU: not unless asked
    x = torch.randn(3, 4, 64)
    xd, wd = fp8_parts(q, x.reshape(-1, 64))
    want = (F.linear(xd, wd) + lin.bias).reshape(3, 4, 48)
    assert torch.equal(q(x), want)
    rel = (q(x) - lin(x)).norm() / lin(x).norm()
    assert rel < 0.1  # e4m3 weights and activations: a few percent of the output


@pytest.mark.parametrize("cfg", [C.fp8_per_channel(), C.fp8_per_tensor()], ids=["chan", "tensor"])
@pytest.mark.parametrize("rows", [1, 5, 32])
def test_fp8_scaled_mm_path_equals_the_float32_product(cfg, rows):
    """torch._scaled_mm (oneDNN on the CPU) against (codes_x s_x) @ (codes_w s_w).T in float32:
    the same products, summed in another order, so within the float32 summation bound
    |err| <= K u sum_k |x_k w_k| (u = 2^-24, K = 64 terms, one rounding per product counted)."""
    lin = linear(bias=False)
    q = QuantizedLinear.from_linear(lin, cfg, activations="fp8")
    q.cpu_scaled_mm = True
    x = torch.randn(rows, 64) * 3
    assert q._scaled_mm_applies(x)
    xd, wd = fp8_parts(q, x)
    got = q(x)
    bound = (65 * 2.0 ** -24) * (xd.abs().double() @ wd.abs().double().t())
    assert torch.all((got.double() - (xd @ wd.t()).double()).abs() <= bound)
    assert not torch.equal(got, torch.zeros_like(got))


@pytest.mark.parametrize("scaled_mm", [False, True])
def test_fp8_activations_compile_fullgraph(scaled_mm):
    layers = [QuantizedLinear.from_linear(linear(), C.fp8_per_channel(), "fp8"),
              QuantizedLinear.from_linear(linear(k=48, n=16, seed=1), C.fp8_per_tensor(), "fp8")]
    for layer in layers:
        layer.cpu_scaled_mm = scaled_mm
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1]).eval()
    compiled_equal(model, torch.randn(24, 64))


@pytest.mark.parametrize("cfg", [C.nf4(), C.int8_per_channel(), C.fp8_per_group(16),
                                 C.fp8_per_channel("fp8_e5m2"), C.fp8_per_channel(axis=1),
                                 C.mxfp8()], ids=lambda c: c.describe())
def test_fp8_activations_refuse_other_weights(cfg):
    with pytest.raises(gq.UnsupportedSchemeError, match="activations='fp8' takes FP8 e4m3"):
        QuantizedLinear.from_linear(linear(), cfg, activations="fp8")
    with pytest.raises(gq.UnsupportedSchemeError, match="activations='fp8'"):
        QuantizedLinear(gq.quantize(linear().weight.detach(), cfg), activations="fp8")
    state = QuantizedLinear.from_linear(linear(), cfg).state_dict()
    state["_extra_state"] = {**state["_extra_state"], "activations": "fp8"}
    with pytest.raises(gq.UnsupportedSchemeError, match="activations='fp8'"):
        QuantizedLinear.from_linear(linear(), cfg).load_state_dict(state)


# ------------------------------------------------------------------ quantize_model
def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 32))


@pytest.mark.parametrize("cfg,activations", [(C.nvfp4(), None), (C.nf4(double_quant=True), None),
                                             (C.fp8_per_channel(), "fp8")],
                         ids=["nvfp4", "nf4dq", "fp8-fp8"])
def test_quantize_model_with_float_configs(cfg, activations):
    model, ref = tiny_model(), tiny_model()
    report = gq.quantize_model(model, cfg, ignore=(), activations=activations)
    assert [r.scheme for r in report.layers] == [cfg.describe()] * 2
    assert all(r.sqnr_db > 10 for r in report.layers)  # 4-bit floats: about 20 dB
    x = torch.randn(4, 64)
    h = x
    for i in (0, 2):
        module, lin = model[i], ref[i]
        assert isinstance(module, QuantizedLinear) and module.activations == activations
        assert torch.equal(module.qweight.data, gq.quantize(lin.weight.detach(), cfg).data)
        h = module(h) if i == 2 else torch.relu(module(h))
    assert torch.equal(model(x), h)


@pytest.mark.parametrize("method", ["hqq", "gptq"])
def test_quantize_model_solvers_refuse_float_configs(method):
    calibration = [torch.randn(4, 64)] if method == "gptq" else None
    with pytest.raises(gq.UnsupportedSchemeError, match="float format: use method='rtn'"):
        gq.quantize_model(tiny_model(), C.fp8_per_channel(), method=method,
                          calibration=calibration, ignore=())
    with pytest.raises(gq.UnsupportedSchemeError, match="activations='fp8'"):
        gq.quantize_model(tiny_model(), C.nf4(), activations="fp8", ignore=())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp8_activations_on_cuda():
    """On a CUDA device of capability >= 8.9, bfloat16 inputs take torch._scaled_mm (rowwise,
    bfloat16 output): within 2^-8 of sum_k |x_k w_k| of the float32 product of the dequantized
    parts (the bfloat16 rounding of the output, 2^-9 relative, and the tensor cores' FP8
    accumulation); elsewhere the fallback, exactly F.linear of the dequantized parts."""
    lin = linear(bias=False).cuda()
    q = QuantizedLinear.from_linear(lin, C.fp8_per_channel(), activations="fp8")
    x = torch.randn(32, 64, device="cuda").to(torch.bfloat16)
    applies = torch.cuda.get_device_capability() >= (8, 9)
    assert q._scaled_mm_applies(x) == applies
    assert not q._scaled_mm_applies(x.float())  # rowwise _scaled_mm writes bfloat16 only
    xd, wd = fp8_parts(q, x)
    ref = xd @ wd.t()
    got = q(x).float()
    if applies:
        bound = 2.0 ** -8 * (xd.abs() @ wd.abs().t())
        assert torch.all((got - ref).abs() <= bound)
    else:
        assert torch.equal(got, F.linear(xd, wd).to(torch.bfloat16).float())


def test_export_model_refuses_float_configs():
    from gpuquant.model.export import pack_options_of

    with pytest.raises(gq.UnsupportedSchemeError, match="gpuquant export --scheme"):
        pack_options_of(C.fp8_per_channel(), [])  # FP8 is 8 bits, but not pack-quantized int8
