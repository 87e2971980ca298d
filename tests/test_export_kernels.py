"""The export kernels against the NumPy paths, bit for bit (interpreter without a GPU)."""


import numpy as np
import pytest
from conftest import CUDA, INTERPRET
from gguf_cases import edge_blocks

import gpuquant as gq
from gpuquant.core.ggml_blocks import quantize_blocks
from gpuquant.core.pack_quantized import pack32
from gpuquant.export.ctensors import PackOptions, pack_weight

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
if not (CUDA or INTERPRET):
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

from gpuquant.backends.triton import export as triton_export  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"


def dev(a):
    return torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE)


def host(t):
    return t.cpu().numpy()


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("shape", [(5, 37), (19, 64), (1, 300)])
@pytest.mark.parametrize("dim", [0, 1])
def test_pack32_kernel(rng, bits, shape, dim):
    stored = rng.integers(0, 1 << bits, size=shape).astype(np.int32)
    stored[0, 0] = (1 << bits) - 1  # the top code sets the sign bit of a word
    got = host(triton_export.pack32(dev(stored), bits, dim))
    assert np.array_equal(got, pack32(stored, bits, dim))


@pytest.mark.parametrize("options", [
    PackOptions(scheme="int4", group_size=32),
    PackOptions(scheme="int4", group_size=16, symmetric=False),
    PackOptions(scheme="int8", granularity="channel"),
    PackOptions(scheme="int8", granularity="channel", symmetric=False),
    PackOptions(scheme="int4", granularity="channel", symmetric=False),
])
@pytest.mark.parametrize("scale_dtype", ["float32", "bfloat16"])
def test_quantize_pack32_kernel_equals_numpy(rng, options, scale_dtype):
    """The one-kernel GPU path of pack_weight against its NumPy path, odd shapes included."""
    cols = 96 if options.granularity == "group" else 45
    w = (rng.standard_normal((21, cols)) * 2).astype(np.float32)
    w[3, 5] = 0.0
    w[4, :] = 0.0  # a zero row: scale 1
    want = pack_weight(w, options, scale_dtype, "w")
    x = dev(w)
    params = gq.calibrate(x.cpu(), options.quant_config())
    from gpuquant.export.ctensors import round_scale

    _, values = round_scale(np.asarray(params.scale), scale_dtype, "w")
    group = options.group_size if options.granularity == "group" else cols
    zp = np.asarray(params.zero_point)
    words = triton_export.quantize_pack32(x, values, zp, options.bits, options.symmetric, group)
    assert np.array_equal(host(words), want["weight_packed"])
    words = triton_export.quantize_pack32(x, dev(values), dev(zp), options.bits,  # on the device
                                          options.symmetric, group)
    assert np.array_equal(host(words), want["weight_packed"])


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # 1 / 0 of unused lanes
@pytest.mark.parametrize("scheme", ["q8_0", "q4_0"])
def test_gguf_kernel_equals_numpy(rng, scheme):
    for x in (edge_blocks(), (rng.standard_normal((37, 96)) * 4).astype(np.float32),
              rng.standard_normal((3, 2, 64)).astype(np.float16)):
        got = host(triton_export.quantize_gguf(dev(x), scheme))
        assert np.array_equal(got, quantize_blocks(x, scheme))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the interpreter casts NaN and 1e7
@pytest.mark.parametrize("scheme", ["q8_0", "q4_0"])
def test_gguf_kernel_refuses(scheme):
    x = np.ones((3, 64), np.float32)
    x[1, 7] = np.nan
    with pytest.raises(gq.NonFiniteError):
        triton_export.quantize_gguf(dev(x), scheme)
    x[1, 7] = 1e7
    with pytest.raises(gq.InvalidShapeError, match="float16"):
        triton_export.quantize_gguf(dev(x), scheme)


@pytest.mark.slow
def test_export_kernels_compile_for_sm90():
    from ptx_checks import compile_report

    report = compile_report("compile_export_kernels.py")
    assert report["problems"] == []
    assert set(report["kernels"]) == {"pack32_kernel", "quantize_pack32_kernel", "q8_0_kernel",
                                      "q4_0_kernel"}


def triton_for_tensors(module, monkeypatch) -> list:
    """Make ``module``'s select_for give the Triton backend for torch tensors (the interpreter
    runs them on the CPU, where select would pick NumPy); returns the names it gave."""
    from gpuquant.backends import _make

    used = []

    def select_for(a, backend=None):
        used.append("triton" if isinstance(a, torch.Tensor) else "numpy")
        return _make(used[-1])

    monkeypatch.setattr(module, "select_for", select_for)
    return used


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_device_path_of_pack_weight(rng, monkeypatch):
    """pack_weight on "GPU" arrays (torch CPU tensors under the interpreter) gives the
    arrays of its NumPy path."""
    from gpuquant.export import ctensors

    used = triton_for_tensors(ctensors, monkeypatch)
    w = (rng.standard_normal((40, 64)) * 3).astype(np.float32)
    for options in (PackOptions(scheme="int4", group_size=32, symmetric=False),
                    PackOptions(scheme="int8", granularity="channel")):
        got, want = pack_weight(dev(w), options, "float16", "w"), pack_weight(w, options,
                                                                               "float16", "w")
        assert set(got) == set(want)
        for key in want:
            assert np.array_equal(got[key], want[key]), key
    assert used == ["triton", "numpy"] * 2


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_device_path_of_gguf_export(rng, tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from gpuquant.checkpoint.files import write_safetensors
    from gpuquant.export import gguf_file

    w = (rng.standard_normal((40, 64)) * 3).astype(np.float32)
    src = str(tmp_path / "m.safetensors")
    write_safetensors(src, [("a", "F32", w), ("b", "F32", w[:, :7].copy())])
    monkeypatch.setattr(gguf_file, "converter_for", lambda choice: None if choice == "cpu" else dev)
    used = triton_for_tensors(gguf_file, monkeypatch)
    gq.export.gguf(src, str(tmp_path / "gpu.gguf"), "q4_0", device="cuda")
    assert used == ["triton"]  # "b" (7 columns) is kept unquantized
    gq.export.gguf(src, str(tmp_path / "cpu.gguf"), "q4_0", device="cpu")
    assert (tmp_path / "gpu.gguf").read_bytes() == (tmp_path / "cpu.gguf").read_bytes()


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # 1 / 0 of unused lanes
@pytest.mark.parametrize("scheme", ["q8_0", "q4_0"])
def test_backends_give_the_same_gguf_blocks_from_bfloat16_bits(rng, scheme):
    """Backend.quantize_gguf with bf16_bits: the NumPy backend widens the bits a piece at a
    time, the Triton backend reads them as bfloat16; both give gguf_blocks' bytes."""
    from gpuquant.backends import _make

    values = (rng.standard_normal((6, 64)) * 3).astype(np.float32)
    bits = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy()
    want = quantize_blocks(bits, scheme, bf16_bits=True)
    assert np.array_equal(_make("numpy").quantize_gguf(bits, scheme, bf16_bits=True), want)
    got = _make("triton").quantize_gguf(dev(bits), scheme, bf16_bits=True)
    assert np.array_equal(host(got), want)
