"""gq.nn.QuantizedLinear: forward equals F.linear of the dequantized weight, W8A8 through
torch._int_mm, torch.compile(fullgraph=True) without graph breaks, state_dict round trips."""

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from linear_cases import fresh_dynamo, linear  # noqa: E402, F401 (fresh_dynamo: an autouse fixture)
from torch._dynamo import testing  # noqa: E402

import gpuquant as gq  # noqa: E402
from gpuquant.nn import QuantizedLinear  # noqa: E402

CONFIGS = [gq.QuantConfig.int4_per_group(32), gq.QuantConfig.int4_per_group(32, symmetric=False),
           gq.QuantConfig.int8_per_channel(), gq.QuantConfig(scheme="int8", symmetric=False),
           gq.QuantConfig.int4_per_group(16).replace(nibble_order="low_first", calibration="mse")]


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.describe() for c in CONFIGS])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_linear_of_the_dequantized_weight(cfg, bias):
    lin = linear(bias)
    q = QuantizedLinear.from_linear(lin, cfg)
    assert (q.in_features, q.out_features) == (64, 48) and (q.bias is None) == (not bias)
    assert torch.equal(q.qweight.data, gq.quantize(lin.weight.detach(), cfg).data)
    x = torch.randn(3, 5, 64)
    want = F.linear(x, q.qweight.dequantize(), lin.bias)
    assert torch.equal(q(x), want)
    assert torch.equal(q(x), want)  # the reused workspace gives the same again


def test_bfloat16_weights_and_inputs():
    lin = linear(dtype=torch.bfloat16)
    q = QuantizedLinear.from_linear(lin, CONFIGS[0])
    x = torch.randn(4, 64).to(torch.bfloat16)
    assert q(x).dtype == torch.bfloat16
    assert torch.equal(q(x), F.linear(x, q.qweight.dequantize(), lin.bias))


def test_w8a8_int_mm_matches_its_integer_product():
    lin = linear()
    q = QuantizedLinear.from_linear(lin, gq.QuantConfig.int8_per_channel(), activations="int8")
    assert q._int_mm_applies(32)
    x = torch.randn(32, 64)
    qx = gq.quantize(x, gq.QuantConfig(scheme="int8", granularity="token"))
    acc = qx.data.to(torch.int64) @ q.qdata.to(torch.int64).t()  # exact integers
    want = acc.to(torch.float32) * qx.scale.reshape(-1, 1) * q.scale.reshape(1, -1) + lin.bias
    assert torch.equal(q(x), want)
    rel = (q(x) - lin(x)).norm() / lin(x).norm()
    assert rel < 0.02  # int8 weights and activations: about 1% of the output


def test_w8a8_falls_back_where_int_mm_does_not_apply():
    lin = linear()
    q = QuantizedLinear.from_linear(lin, CONFIGS[0], activations="int8")  # int4 weights
    assert not q._int_mm_applies(32)
    x = torch.randn(8, 64)
    qx = gq.quantize(x, gq.QuantConfig(scheme="int8", granularity="token"))
    xq = qx.data.float() * qx.scale.reshape(-1, 1)
    assert torch.equal(q(x), F.linear(xq, q.qweight.dequantize()) + lin.bias)


@pytest.mark.parametrize("activations", [None, "int8"])
def test_compiles_fullgraph_without_graph_breaks(activations):
    cfg = gq.QuantConfig.int8_per_channel() if activations else CONFIGS[1]
    model = torch.nn.Sequential(QuantizedLinear.from_linear(linear(), cfg, activations),
                                torch.nn.ReLU(),
                                QuantizedLinear.from_linear(linear(k=48, n=16, seed=1), cfg,
                                                            activations)).eval()
    x = torch.randn(24, 64)
    assert torch._dynamo.explain(model)(x).graph_break_count == 0
    cnt = testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=cnt, fullgraph=True)
    with torch.no_grad():
        assert torch.equal(compiled(x), model(x))
    assert cnt.frame_count == 1


def test_state_dict_round_trip_into_another_config():
    lin = linear()
    src = QuantizedLinear.from_linear(lin, CONFIGS[1])
    dst = QuantizedLinear.from_linear(lin, CONFIGS[2])  # other buffer shapes and dtypes
    dst.load_state_dict(src.state_dict())
    assert dst.config == src.config
    x = torch.randn(2, 64)
    assert torch.equal(dst(x), src(x))
    for name in ("qdata", "scale", "zero_point"):
        assert torch.equal(getattr(dst, name), getattr(src, name))


def test_bad_arguments_raise_gq_errors():
    qt = gq.quantize(linear().weight.detach(), CONFIGS[0])
    with pytest.raises(gq.UnsupportedSchemeError, match="activations"):
        QuantizedLinear(qt, activations="fp8")
    with pytest.raises(gq.QuantizationError, match="torch"):
        QuantizedLinear(gq.quantize(linear().weight.detach().numpy(), CONFIGS[0]))
    with pytest.raises(gq.InvalidShapeError, match="2-D"):
        QuantizedLinear(gq.quantize(torch.randn(4, 4, 32), CONFIGS[0]))


def test_gradients_through_the_input_use_each_layer_own_weight():
    """The shared workspace is not used when autograd keeps the weight for backward."""
    cfg = CONFIGS[0]
    a, b = (QuantizedLinear.from_linear(linear(seed=s, k=64, n=64), cfg) for s in (1, 2))
    x = torch.randn(3, 64, requires_grad=True)
    a(b(x)).sum().backward()
    wa, wb = a.dequantized_weight(), b.dequantized_weight()
    want = torch.ones(3, 64) @ wa @ wb
    assert torch.allclose(x.grad, want, rtol=1e-5, atol=1e-6)


def test_model_half_keeps_float32_scales():
    lin = linear()
    q = QuantizedLinear.from_linear(lin, CONFIGS[1])
    scale = q.scale.clone()
    q = q.to(torch.bfloat16)
    assert q.scale.dtype == torch.float32 and torch.equal(q.scale, scale)
    x = torch.randn(2, 64).to(torch.bfloat16)
    want = F.linear(x, q.qweight.dequantize(dtype="bfloat16"), q.bias)
    assert q(x).dtype == torch.bfloat16 and torch.equal(q(x), want)
