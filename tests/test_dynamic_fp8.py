"""gq.DynamicQuantizer("fp8_e4m3", per_token=True / group_size=...): vLLM's dynamic FP8
activations. The NumPy reference against vLLM's formula (written here in torch), the Triton
kernel against the reference bit for bit (TRITON_INTERPRET=1 without a GPU), the bits of
gq.quantize's FP8 token / group configs except at vLLM's floors, torch.compile."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gpuquant as gq  # noqa: E402
from gpuquant.formats.reference import fp8_dynamic  # noqa: E402

C = gq.QuantConfig


def activations(rng, shape):
    x = (rng.standard_normal(shape) * np.exp(rng.uniform(-2, 2, shape))).astype(np.float32)
    flat = x.reshape(-1, shape[-1])
    flat[0] = 0.0           # a zero row: both floors
    flat[1] *= 1e-5         # under vLLM's per-token floor (amax < 1 / 512)
    flat[2, :5] = 1e-12     # a group under the per-group floor (amax < 1e-10) when g <= 5
    flat[2, 5:] = 0.0
    flat[3, 7] = -1000.0    # a wide row
    return x


def vllm_formula(x, group_size):
    """vLLM's per-token (dynamic_per_token_scaled_fp8_quant) and per-token-group
    (per_token_group_quant_fp8) FP8 e4m3, in torch: (codes, scale)."""
    x = torch.from_numpy(x)
    k = x.shape[-1]
    if group_size is None:
        s = torch.clamp(x.abs().amax(-1, keepdim=True) / 448.0, min=np.float32(1 / (448 * 512)))
        q = (x / s).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
        return q.numpy(), s.squeeze(-1).numpy()
    g = group_size
    p = torch.nn.functional.pad(x, (0, -(-k // g) * g - k)).reshape(*x.shape[:-1], -1, g)
    s = p.abs().amax(-1, keepdim=True).clamp(min=np.float32(1e-10)) / 448.0
    q = (p / s).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
    return q.reshape(*x.shape[:-1], -1)[..., :k].numpy(), s.squeeze(-1).numpy()


CASES = [((2, 3, 40), None), ((2, 3, 40), 16), ((6, 256), 128), ((5, 300), 128), ((4, 9), 4)]


@pytest.mark.parametrize("shape,g", CASES)
def test_reference_is_vllm_formula(rng, shape, g):
    x = activations(rng, shape)
    cfg = C.fp8_per_token() if g is None else C.fp8_per_group(g)
    codes, scale = fp8_dynamic(x, cfg)
    want_codes, want_scale = vllm_formula(x, g)
    assert np.array_equal(scale, want_scale) and np.array_equal(codes, want_codes)


@pytest.mark.parametrize("shape,g", CASES)
def test_quantizer_gives_the_reference_and_its_config(rng, shape, g):
    x = activations(rng, shape)
    dq = gq.DynamicQuantizer("fp8_e4m3", per_token=g is None, group_size=g)
    assert dq.floors == "vllm" and dq.config == (C.fp8_per_token() if g is None
                                                 else C.fp8_per_group(g))
    codes, scale = fp8_dynamic(x, dq.config)
    for arr in (x, torch.from_numpy(x), torch.from_numpy(x).to(torch.bfloat16).float()):
        qt = dq(arr)
        want_codes, want_scale = fp8_dynamic(np.asarray(arr), dq.config)
        assert qt.config == dq.config and qt.zero_point is None and qt.shape == shape
        assert np.array_equal(np.asarray(qt.data), want_codes)
        assert np.array_equal(np.asarray(qt.scale), want_scale)
    y = dq(x).dequantize()  # codes times scale, as any FP8 token / group tensor
    assert np.array_equal(y, gq.QuantizedTensor(codes, scale, None, shape, "float32",
                                                dq.config).dequantize())


@pytest.mark.parametrize("shape,g", CASES)
def test_bits_equal_gq_quantize_except_under_the_floors(rng, shape, g):
    x = activations(rng, shape)
    dq = gq.DynamicQuantizer("fp8_e4m3", per_token=g is None, group_size=g)
    ours, theirs = dq(x), gq.quantize(x, dq.config)
    amax = np.abs(x).max(-1) if g is None else np.abs(
        np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, -(-shape[-1] // g) * g - shape[-1])])
    ).reshape(*shape[:-1], -1, g).max(-1)
    under = amax < np.float32(1 / 512) if g is None else amax < np.float32(1e-10)
    assert under.any() and not under.all()
    assert np.array_equal(ours.scale[~under], theirs.scale[~under])
    assert np.all(ours.scale[under] != theirs.scale[under])
    same = ~under if g is None else np.repeat(~under, g, axis=-1)[..., :shape[-1]]
    assert np.array_equal(ours.data[same], theirs.data[same])


def test_other_schemes_keep_gq_quantize(rng):
    x = activations(rng, (4, 64))
    for dq in (gq.DynamicQuantizer("fp8_e4m3"), gq.DynamicQuantizer("fp8_e5m2", per_token=True),
               gq.DynamicQuantizer("int8", group_size=32)):
        assert dq.floors is None
        assert np.array_equal(dq(x).data, gq.quantize(x, dq.config).data)
    assert "group_size=128" in repr(gq.DynamicQuantizer("fp8_e4m3", group_size=128))


def test_bad_arguments_raise_gq_errors(rng):
    dq = gq.DynamicQuantizer("fp8_e4m3", per_token=True)
    with pytest.raises(gq.UnsupportedSchemeError, match="out="):
        dq(np.ones((2, 4), np.float32), out=(np.empty((2, 4), np.uint8),))
    with pytest.raises(gq.InvalidShapeError, match="0-d"):
        dq(np.float32(1.0))
    with pytest.raises(gq.UnsupportedSchemeError, match="ignore_nonfinite"):
        gq.DynamicQuantizer("fp8_e4m3", per_token=True, ignore_nonfinite=True)
    with pytest.raises(gq.QuantizationError, match="group_size"):
        gq.DynamicQuantizer("fp8_e4m3", group_size=0)


def test_compiles_fullgraph_without_graph_breaks(rng):
    from torch._dynamo import testing

    dq = gq.DynamicQuantizer("fp8_e4m3", per_token=True)

    def f(x):
        qt = dq(x)
        return qt.dequantize(), qt.scale

    x = torch.from_numpy(activations(rng, (8, 64)))
    torch._dynamo.reset()
    assert torch._dynamo.explain(f)(x).graph_break_count == 0
    torch._dynamo.reset()
    cnt = testing.CompileCounterWithBackend("aot_eager")
    got = torch.compile(f, backend=cnt, fullgraph=True)(x)
    want = f(x)
    assert cnt.frame_count == 1
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    torch._dynamo.reset()


@pytest.mark.parametrize("shape,g", CASES)
def test_triton_kernel_equals_the_reference(rng, shape, g):
    pytest.importorskip("triton")
    from conftest import CUDA, INTERPRET

    if not (CUDA or INTERPRET):
        pytest.skip("needs a CUDA device or TRITON_INTERPRET=1")
    x = activations(rng, shape)
    dq = gq.DynamicQuantizer("fp8_e4m3", per_token=g is None, group_size=g, backend="triton")
    xt = torch.from_numpy(x).to("cuda" if CUDA and not INTERPRET else "cpu")
    from gpuquant.backends.triton.launch import recording

    with recording(execute=True) as launches:
        qt = dq(xt)
    assert [launch.name for launch in launches] == ["float_units_kernel"]
    codes, scale = fp8_dynamic(x, dq.config)
    assert np.array_equal(qt.scale.cpu().numpy(), scale)
    assert np.array_equal(qt.data.cpu().numpy(), codes)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("g", [None, 128])
def test_cuda_inputs_take_the_kernel_bit_exact(rng, g):
    x = activations(rng, (64, 4096))
    qt = gq.DynamicQuantizer("fp8_e4m3", per_token=g is None, group_size=g)(
        torch.from_numpy(x).cuda())
    codes, scale = fp8_dynamic(x, qt.config)
    assert qt.data.is_cuda and np.array_equal(qt.scale.cpu().numpy(), scale)
    assert np.array_equal(qt.data.cpu().numpy(), codes)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's inf/inf
@pytest.mark.parametrize("g", [None, 8])
def test_nan_and_inf_units_kernel_and_reference_agree(g):
    """A NaN unit takes the floor (the kernel's max of NaN and the floor is the floor), so its
    finite values saturate and the NaN codes NaN; an Inf unit an Inf scale: finite values code
    0, the Inf NaN."""
    pytest.importorskip("triton")
    from conftest import CUDA, INTERPRET

    if not (CUDA or INTERPRET):
        pytest.skip("needs a CUDA device or TRITON_INTERPRET=1")
    x = np.linspace(-3, 3, 32, dtype=np.float32).reshape(2, 16)
    x[0, 3], x[1, 2] = np.nan, np.inf
    cfg = C.fp8_per_token() if g is None else C.fp8_per_group(g)
    codes, scale = fp8_dynamic(x, cfg)
    floor = np.float32(1 / (448 * 512)) if g is None else np.float32(1e-10) / np.float32(448)
    assert scale.reshape(2, -1)[0, 0] == floor and np.isinf(scale.reshape(2, -1)[1, 0])
    assert codes[0, 3] & 0x7F == 0x7F and codes[0, 0] == 0xFE  # NaN; -448
    assert codes[1, 2] & 0x7F == 0x7F and codes[1, 0] & 0x7F == 0  # NaN; a zero
    dq = gq.DynamicQuantizer("fp8_e4m3", per_token=g is None, group_size=g, backend="triton")
    device = "cuda" if CUDA and not INTERPRET else "cpu"
    qt = dq(torch.from_numpy(x).to(device))
    assert np.array_equal(qt.scale.cpu().numpy(), scale)
    got = qt.data.cpu().numpy()
    assert np.array_equal(got & 0x7F, codes & 0x7F)  # a NaN's sign is the platform's
