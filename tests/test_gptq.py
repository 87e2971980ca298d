"""GPTQ (gpuquant.model.gptq, gq.quantize_model(method="gptq")): identity Hessian = round-to-
nearest bit for bit, lower output error than round-to-nearest on correlated inputs, the float32
torch solve against the float64 NumPy reference, sequential layer inputs."""

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.model import GPTQ
from gpuquant.model.gptq import FLOAT_CODE_FRACTION, gptq_quantize

torch = pytest.importorskip("torch")

CONFIGS = [gq.QuantConfig.int4_per_group(32), gq.QuantConfig.int4_per_group(32, symmetric=False),
           gq.QuantConfig.int4_per_group(32).replace(calibration="mse"),
           gq.QuantConfig.int4_per_group(64), gq.QuantConfig.int8_per_channel(),
           gq.QuantConfig(scheme="int4", granularity="tensor", symmetric=False)]
IDS = [c.describe() for c in CONFIGS]
K = 128


def weight(seed=0, rows=40):
    return (np.random.default_rng(seed).standard_normal((rows, K)) * 0.05).astype(np.float32)


def correlated_inputs(seed=1, n=1024):
    rng = np.random.default_rng(seed)
    mix = np.eye(K) + 0.4 * rng.standard_normal((K, K))
    return (rng.standard_normal((n, K)) @ mix * rng.uniform(0.2, 3, K)).astype(np.float32)


def hessian(x):
    x = x.astype(np.float64)
    return 2 * x.T @ x


def out_error(x, w, qt):
    deq = qt.dequantize()
    deq = deq.numpy() if hasattr(deq, "numpy") else deq
    return float(np.mean((x @ deq.T - x @ w.T) ** 2))


@pytest.mark.parametrize("cfg", CONFIGS + [CONFIGS[0].replace(group_size=16)],
                         ids=IDS + ["group16"])
@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_identity_hessian_equals_round_to_nearest(cfg, precision):
    w = weight(rows=40 if cfg.bits == 4 else 24)
    rtn = gq.quantize(w, cfg)
    k = w.shape[1]
    h = np.eye(k) if precision == "float64" else torch.eye(k)
    src = w if precision == "float64" else torch.from_numpy(w)
    got = gptq_quantize(src, h, cfg, GPTQ(precision=precision, block_size=32))  # groups 16, 32, 64
    for name in ("data", "scale", "zero_point"):
        part = getattr(got, name)
        part = part.numpy() if hasattr(part, "numpy") else part
        assert np.array_equal(part, getattr(rtn, name)), name


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("act_order", [False, True])
def test_lower_output_error_than_round_to_nearest(cfg, act_order):
    w, x = weight(2), correlated_inputs()
    got = gptq_quantize(w, hessian(x), cfg, GPTQ(act_order=act_order))
    assert out_error(x, w, got) < 0.8 * out_error(x, w, gq.quantize(w, cfg))
    assert got.scale.shape == gq.quantize(w, cfg).scale.shape


@pytest.mark.parametrize("cfg", CONFIGS[:3] + CONFIGS[4:5], ids=IDS[:3] + IDS[4:5])
def test_float32_solve_within_tolerance_of_the_float64_reference(cfg):
    w, x = weight(3), correlated_inputs(4)
    ref = gptq_quantize(w, hessian(x), cfg)  # NumPy, float64
    f32 = gptq_quantize(torch.from_numpy(w), torch.from_numpy(hessian(x)), cfg,
                        GPTQ(precision="float32"))
    differ = np.mean(ref.data != f32.data.numpy())
    assert differ <= FLOAT_CODE_FRACTION
    assert out_error(x, w, f32) <= 1.02 * out_error(x, w, ref)


def test_dead_inputs_and_shape_checks():
    w, x = weight(5), correlated_inputs(6)
    x[:, 7] = 0  # an input that never fires: its column is zeroed, as the reference does
    got = gptq_quantize(w, hessian(x), CONFIGS[0])
    assert np.all(got.dequantize()[:, 7] == 0)
    with pytest.raises(gq.InvalidShapeError, match="hessian"):
        gptq_quantize(w, np.eye(K - 1), CONFIGS[0])


def mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(K, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 32)).eval()


def test_quantize_model_layers_see_the_quantized_layers_before_them():
    x = torch.from_numpy(correlated_inputs(7, n=256))
    batches = [x[:100], x[100:]]
    model = mlp()
    w0, w2 = (model[i].weight.detach().clone() for i in (0, 2))
    report = gq.quantize_model(model, CONFIGS[0], method="gptq", calibration=iter(batches))
    assert [r.name for r in report.layers] == ["0", "2"] and report.method == "gptq"
    h0 = hessian(x.numpy())
    first = gptq_quantize(w0, torch.from_numpy(h0), CONFIGS[0])
    assert torch.equal(model[0].qdata, first.data)
    with torch.no_grad():  # the second layer's inputs come from the quantized first layer
        mid = torch.relu(torch.nn.functional.linear(x, first.dequantize(), model[0].bias))
    second = gptq_quantize(w2, torch.from_numpy(hessian(mid.numpy())), CONFIGS[0])
    assert torch.equal(model[2].qdata, second.data)


def test_quantize_model_gptq_beats_rtn_on_a_tiny_model():
    data = torch.from_numpy(correlated_inputs(8, n=768))  # one distribution: calibrate, test
    x, test = data[:512], data[512:]
    ref = mlp(1)
    errors = {}
    for method in ("rtn", "gptq"):
        model = mlp(1)
        gq.quantize_model(model, CONFIGS[1], method=method,
                          calibration=[x[:256], x[256:]] if method == "gptq" else None)
        with torch.no_grad():
            errors[method] = float(((model(test) - ref(test)) ** 2).mean())
    assert errors["gptq"] < 0.8 * errors["rtn"], errors


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_a_hessian_that_is_not_positive_definite_raises_a_gq_error(precision):
    h = -np.eye(K)  # no damping of 1% of a negative diagonal makes it positive
    w = weight(7)
    args = (w, h) if precision == "float64" else (torch.from_numpy(w), torch.from_numpy(h))
    with pytest.raises(gq.InvalidCalibrationError, match="positive definite"):
        gptq_quantize(*args, CONFIGS[0], GPTQ(precision=precision))


def test_layers_given_the_same_input_share_one_hessian_pass():
    from transformers import BertConfig, BertModel

    from gpuquant.model.api import select_linears
    from gpuquant.model.hessians import call_groups

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=1, num_attention_heads=2)).eval()
    groups = call_groups(bert, select_linears(bert, None, ()), [torch.tensor([[1, 2, 3]])])
    names = [[n.split(".")[-1] if "attention.self" in n else n for n in g] for g, _ in groups]
    assert names[0] == ["query", "key", "value"] and all(once for _, once in groups)
    assert len(groups) == 5  # qkv, attention.output.dense, intermediate, output, pooler


def test_a_layer_called_twice_sees_both_inputs():
    from gpuquant.model.hessians import call_groups, layer_hessian

    torch.manual_seed(0)
    shared = torch.nn.Linear(32, 32)
    model = torch.nn.Sequential(shared, torch.nn.Tanh(), shared).eval()
    x = torch.randn(10, 32)
    groups = call_groups(model, {"0": shared}, [x])
    assert groups == [(["0"], False)]
    h = layer_hessian(model, shared, [x], torch.float64, torch.device("cpu"), stop=False)
    with torch.no_grad():
        mid = torch.tanh(shared(x)).double()
    want = 2 * (x.double().T @ x.double() + mid.T @ mid)
    assert torch.allclose(h, want, rtol=1e-12, atol=1e-9)


def test_bfloat16_weights_keep_their_dtype():
    w = torch.from_numpy(weight(8)).to(torch.bfloat16)
    x = correlated_inputs(9)
    got = gptq_quantize(w, torch.from_numpy(hessian(x)), CONFIGS[0])
    assert got.dtype == "bfloat16" and got.dequantize().dtype == torch.bfloat16
    ident = gptq_quantize(w, torch.eye(K, dtype=torch.float64), CONFIGS[0])
    assert torch.equal(ident.data, gq.quantize(w, CONFIGS[0]).data)
