"""Real launches on a CUDA device (run by bench/device_check.sh; skipped elsewhere).

The same bit-exact comparisons as the interpreter tests, at sizes only a GPU
reaches, plus devices, streams, CuPy without torch and CUDA-graph capture.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import CUDA, INTERPRET

import gpuquant as gq

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not CUDA or INTERPRET, reason="needs a CUDA device")]

CONFIGS = [gq.QuantConfig.int4_per_group(128, symmetric=False), gq.QuantConfig.int4_per_group(128),
           gq.QuantConfig.int8_per_channel(), gq.QuantConfig.int8_per_channel(axis=-1),
           gq.QuantConfig.int8_symmetric(), gq.QuantConfig(granularity="token"),
           gq.QuantConfig(scheme="int16", granularity="channel", symmetric=False)]


def same(a, b):
    import torch

    for name in ("data", "scale", "zero_point"):
        assert torch.equal(getattr(a, name).cpu(), getattr(b, name).cpu()), name


@pytest.fixture(scope="module")
def big():
    import torch

    g = torch.Generator(device="cuda").manual_seed(0)
    return torch.randn(8192, 8192, device="cuda", generator=g, dtype=torch.float16) * 3


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.describe())
def test_large_bit_exact(big, cfg):
    got = gq.quantize(big, cfg)
    got.check_finite()
    want = gq.quantize(big.cpu(), cfg)
    same(got, want)
    import torch

    assert torch.equal(got.dequantize().cpu(), want.dequantize())


def test_percentile_large_bit_exact(big):
    cfg = gq.QuantConfig.int8_per_channel().replace(calibration=gq.Percentile(0.1, 99.9))
    same(gq.quantize(big, cfg), gq.quantize(big.cpu(), cfg))


def test_above_2_31_elements():
    import torch

    rows = (1 << 31) // 8192 + 16
    x = torch.empty(rows, 8192, device="cuda", dtype=torch.float16)
    x.normal_(generator=torch.Generator(device="cuda").manual_seed(1))
    cfg = gq.QuantConfig.int4_per_group(128)
    qt = gq.quantize(x, cfg)
    for part in (slice(0, 64), slice(rows - 64, rows)):  # groups are local: check both ends
        ref = gq.quantize(x[part].cpu(), cfg)
        assert torch.equal(qt.data[part].cpu(), ref.data)
        assert torch.equal(qt.scale[part].cpu(), ref.scale)
    flat = gq.quantize(x.reshape(-1), gq.QuantConfig.int8_symmetric())  # one row of 2^31+
    tail = x.reshape(-1)[-4096:].cpu()
    ref = gq.quantize(tail, gq.QuantConfig.int8_symmetric(),
                      qparams=(flat.scale.cpu(), flat.zero_point.cpu()))
    assert torch.equal(flat.data[-4096:].cpu(), ref.data)
    per_tensor = gq.quantize(x, gq.QuantConfig.int8_symmetric())
    amax = torch.maximum(x.amin().abs(), x.amax().abs()).float().cpu().numpy()
    assert per_tensor.scale.item() == np.float32(amax) / np.float32(127)
    y = per_tensor.dequantize()
    assert y.shape == x.shape and torch.equal(y[-1].cpu(), gq.quantize(
        x[-1:].cpu(), gq.QuantConfig.int8_symmetric(), qparams=(
            per_tensor.scale.cpu(), per_tensor.zero_point.cpu())).dequantize()[0])


def test_second_device():
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("one GPU")
    x = torch.randn(512, 1024, device="cuda:1", dtype=torch.bfloat16)
    qt = gq.quantize(x, gq.QuantConfig.int4_per_group(64))
    assert qt.data.device == x.device and qt.dequantize().device == x.device
    same(qt, gq.quantize(x.cpu(), gq.QuantConfig.int4_per_group(64)))


def test_torch_non_default_stream(big):
    import torch

    cfg = gq.QuantConfig.int4_per_group(128)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        qt = gq.quantize(big, cfg)
        y = qt.dequantize()
    stream.synchronize()
    same(qt, gq.quantize(big, cfg))
    assert torch.equal(y, qt.dequantize())


GRAPH_CONFIGS = [gq.QuantConfig.int4_per_group(128), gq.QuantConfig.int8_per_channel(),
                 gq.QuantConfig.int8_symmetric()]  # fused, fused per row, three launches


def _warm_up(fn):
    """Run ``fn`` on a side stream first: plans built and kernels compiled before capture."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)


@pytest.mark.parametrize("cfg", GRAPH_CONFIGS, ids=lambda c: c.describe())
@pytest.mark.parametrize("with_out", [False, True], ids=["new-outputs", "out="])
def test_cuda_graph_capture_of_quantize(cfg, with_out):
    """quantize, dequantize and the per-token quantizer captured in one CUDAGraph: every
    replay on new input values equals eager calls bit for bit."""
    import torch

    x = torch.randn(1024, 4096, device="cuda", dtype=torch.float16)
    dq = gq.DynamicQuantizer("int8", per_token=True)
    ref = gq.quantize(x, cfg)
    ref_tok = dq(x)
    out = tuple(torch.empty_like(a) for a in (ref.data, ref.scale, ref.zero_point))
    out_tok = tuple(torch.empty_like(a) for a in (ref_tok.data, ref_tok.scale, ref_tok.zero_point))
    y_out = torch.empty_like(x)

    def step():
        qt = gq.quantize(x, cfg, out=out if with_out else None)
        y = qt.dequantize(out=y_out if with_out else None)
        tok = dq(x, out=out_tok if with_out else None)
        return qt, y, tok

    _warm_up(step)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        qt, y, tok = step()
    if with_out:
        assert qt.data is out[0] and y is y_out and tok.scale is out_tok[1]
    for seed in range(2):
        x.copy_(torch.randn(x.shape, device="cuda", generator=torch.Generator(
            device="cuda").manual_seed(seed), dtype=x.dtype))
        graph.replay()
        torch.cuda.synchronize()
        want = gq.quantize(x, cfg)
        same(qt, want)
        assert torch.equal(y, want.dequantize())
        same(tok, dq(x))


def test_make_graphed_callables_of_the_hot_calls():
    import torch

    cfg = gq.QuantConfig.int4_per_group(128)
    dq = gq.DynamicQuantizer("int8", per_token=True)

    def quantize(x):
        qt = gq.quantize(x, cfg)
        return qt.data, qt.scale, qt.zero_point, qt.dequantize()

    def per_token(x):
        qt = dq(x)
        return qt.data, qt.scale

    x = torch.randn(256, 1024, device="cuda", dtype=torch.bfloat16)
    graphed = torch.cuda.make_graphed_callables((quantize, per_token), ((x,), (x,)))
    for _ in range(2):
        fresh = torch.randn_like(x)
        for fn, g in zip((quantize, per_token), graphed):
            got = [a.clone() for a in g(fresh)]
            want = fn(fresh)
            assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_nan_in_a_replayed_input_is_reported_after_the_replay():
    import torch

    cfg = gq.QuantConfig.int4_per_group(128)
    x = torch.randn(64, 512, device="cuda")
    _warm_up(lambda: gq.quantize(x, cfg))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        qt = gq.quantize(x, cfg)
    graph.replay()
    qt.check_finite()  # clean data: nothing to report
    x[5, 300] = float("nan")
    graph.replay()
    with pytest.raises(gq.NonFiniteError, match=r"\(64, 512\) has 1 non-finite.*unit 22 "):
        qt.check_finite()  # waits for the replay, then reads the board
    graph.replay()
    torch.cuda.synchronize()
    with pytest.raises(gq.NonFiniteError, match=r"\(64, 512\) has 1 non-finite"):
        gq.quantize(torch.randn(8, 128, device="cuda"), cfg)  # the next eager call reports
    gq.quantize(torch.randn(8, 128, device="cuda"), cfg).check_finite()  # reported once


def test_deferred_nonfinite_report():
    import torch

    x = torch.randn(256, 256, device="cuda")
    x[3, 7] = float("nan")
    qt = gq.quantize(x, gq.QuantConfig.int8_per_channel())  # no sync here
    with pytest.raises(gq.NonFiniteError, match="1 non-finite"):
        qt.check_finite()


CUPY_ONLY = textwrap.dedent("""
    import sys
    import numpy as np
    import cupy
    import gpuquant as gq

    x = cupy.asarray(np.random.default_rng(0).standard_normal((512, 1000)).astype(np.float16))
    cfg = gq.QuantConfig.int4_per_group(128)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        qt = gq.quantize(x, cfg)
        y = qt.dequantize()
    stream.synchronize()
    ref = gq.quantize(cupy.asnumpy(x), cfg)
    assert isinstance(qt.data, cupy.ndarray)
    assert (cupy.asnumpy(qt.data) == ref.data).all()
    assert (cupy.asnumpy(qt.scale) == ref.scale).all()
    assert (cupy.asnumpy(y) == ref.dequantize()).all()
    import triton
    version = tuple(int(v) for v in triton.__version__.split(".")[:2])
    # Triton 3.8+ launches without torch; older Triton imports it to find the stream
    assert version < (3, 8) or "torch" not in sys.modules, "torch was imported"
    print("cupy-only ok", "torch imported" if "torch" in sys.modules else "without torch")
""")


def test_cupy_only_process():
    pytest.importorskip("cupy")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", CUPY_ONLY], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "cupy-only ok" in out.stdout


def test_calibrator_qparams_apply_to_gpu_data(big):
    cfg = gq.QuantConfig.int8_per_channel().replace(calibration=gq.Percentile(1, 99))
    cal = gq.Calibrator(cfg)
    for part in big.split(2048, dim=1):
        cal.update(part)
    params = cal.qparams()  # NumPy: copied to the GPU by quantize
    qt = gq.quantize(big, cfg, qparams=params)
    same(qt, gq.quantize(big.cpu(), cfg, qparams=params))


# ------------------------------------------------- torch.compile on CUDA tensors (issue 10)
def _compile_counter(backend="inductor"):
    import torch._dynamo.testing

    torch._dynamo.reset()
    return torch._dynamo.testing.CompileCounterWithBackend(backend)


def test_inductor_per_token_and_dequantize_on_cuda():
    import torch

    dq = gq.DynamicQuantizer("int8", per_token=True)
    cfg = gq.QuantConfig.int4_per_group(128)

    def per_token_codes(x):
        qt = dq(x)
        return qt.data, qt.scale

    def dequantize_matmul(qt, w):
        return qt.dequantize() @ w

    cnt = _compile_counter()
    fn = torch.compile(per_token_codes, backend=cnt, fullgraph=True, dynamic=True)
    for tokens in (16, 33, 7):
        x = torch.randn(tokens, 4096, device="cuda", dtype=torch.float16)
        for got, want in zip(fn(x), per_token_codes(x)):
            assert torch.equal(got, want)
    assert cnt.frame_count == 1
    assert torch._dynamo.explain(per_token_codes)(x).graph_break_count == 0
    cnt = _compile_counter()
    fn = torch.compile(dequantize_matmul, backend=cnt, fullgraph=True)
    for _ in range(2):
        qt = gq.quantize(torch.randn(512, 1024, device="cuda"), cfg)
        w = torch.randn(1024, 64, device="cuda")
        assert torch.equal(fn(qt, w), dequantize_matmul(qt, w))
    assert cnt.frame_count == 1


def test_inductor_out_buffers_on_cuda():
    import torch

    cfg = gq.QuantConfig.int8_per_channel()
    x = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
    want = gq.quantize(x, cfg)

    def fill(x, codes, scale, zero_point, y):
        gq.quantize(x, cfg, out=(codes, scale, zero_point)).dequantize(out=y)

    buffers = [torch.zeros_like(a) for a in (want.data, want.scale, want.zero_point)]
    y = torch.zeros_like(x)
    torch.compile(fill, backend=_compile_counter(), fullgraph=True)(x, *buffers, y)
    for got, expected in zip(buffers, (want.data, want.scale, want.zero_point)):
        assert torch.equal(got, expected)
    assert torch.equal(y, want.dequantize())


def test_compiled_example_is_faster_than_eager_on_cuda():
    """examples/int8_activations.py: bit-identical to eager (run() raises otherwise), and its
    compiled block (one CUDA graph, mode="reduce-overhead") beats the eager calls."""
    import importlib.util

    _compile_counter()
    path = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "int8_activations.py")
    spec = importlib.util.spec_from_file_location("int8_activations", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.run(tokens=16, hidden=2048, inner=4096, repeats=50, device="cuda")
    print(f"example on {result['device']}: eager {result['eager_s'] * 1e6:.1f} us, "
          f"compiled {result['compiled_s'] * 1e6:.1f} us")
    assert result["compiled_s"] < result["eager_s"], result
