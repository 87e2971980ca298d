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


def test_cuda_graph_capture_of_quantize():
    import torch

    cfg = gq.QuantConfig.int4_per_group(128)
    x = torch.randn(1024, 4096, device="cuda", dtype=torch.float16)
    gq.quantize(x, cfg)  # compile outside the capture
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        gq.quantize(x, cfg)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = gq.quantize(x, cfg)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    same(captured, gq.quantize(x, cfg))


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
