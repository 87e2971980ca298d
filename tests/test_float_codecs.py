"""The float-format device codecs (kernels/float_codecs.py) against the peers, bit for bit.

Each codec runs through a tiny wrapper kernel on a table of edge cases (0,
subnormals, ties, max, past max, inf, NaN) and random magnitudes: torch's
float8 casts and ml_dtypes (FP8), torchao (E2M1, E8M0 by rule). Peers are test
dependencies only. Without a GPU this runs under TRITON_INTERPRET=1 (conftest.py).
"""

import numpy as np
import pytest
from conftest import CUDA, INTERPRET

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
if not (CUDA or INTERPRET):
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

import triton.language as tl  # noqa: E402
from float_cases import F8, FMAX, edge_values, same_floats  # noqa: E402

from gpuquant.backends.triton import floats as tf  # noqa: E402
from gpuquant.kernels import float_codecs as fc  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"


@triton.jit
def codec_kernel(x_ptr, q_ptr, y_ptr, n, FMT: tl.constexpr, B: tl.constexpr):
    i = tl.arange(0, B)
    m = i < n
    x = tl.load(x_ptr + i, mask=m)
    q = fc.element_encode(fc.clamp_fmax(x, FMT), FMT)
    tl.store(q_ptr + i, q, mask=m)
    tl.store(y_ptr + i, fc.element_decode(q, FMT), mask=m)


@triton.jit
def e8m0_kernel(a_ptr, e_ptr, v_ptr, n, FMT: tl.constexpr, RULE: tl.constexpr, B: tl.constexpr):
    i = tl.arange(0, B)
    m = i < n
    e = fc.e8m0_encode(tl.load(a_ptr + i, mask=m), FMT, RULE)
    tl.store(e_ptr + i, e, mask=m)
    tl.store(v_ptr + i, fc.e8m0_decode(e), mask=m)


def run_codec(x, fmt):
    q = torch.empty(x.shape, dtype=torch.int32, device=x.device)
    y = torch.empty_like(x)
    codec_kernel[(1,)](x, q, y, x.numel(), FMT=fmt, B=triton.next_power_of_2(x.numel()))
    return q, y



@pytest.mark.parametrize("element", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_codec_equals_torch_and_ml_dtypes(rng, element):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    x = edge_values(rng, DEVICE)
    q, y = run_codec(x, tf.FMT[element])
    clamped = x.clamp(-FMAX[element], FMAX[element])
    want = clamped.to(F8[element])
    assert torch.equal(q.cpu(), want.view(torch.uint8).to(torch.int32).cpu())
    assert same_floats(y, want.float())
    ml = clamped.cpu().numpy().astype(getattr(ml_dtypes, {"fp8_e4m3": "float8_e4m3fn",
                                                           "fp8_e5m2": "float8_e5m2"}[element]))
    finite = np.isfinite(clamped.cpu().numpy())  # ml_dtypes' NaN payload differs from torch's
    assert np.array_equal(q.cpu().numpy()[finite], ml.view(np.uint8)[finite].astype(np.int32))


def test_e2m1_codec_equals_torchao(rng):
    custom = pytest.importorskip("torchao.prototype.custom_fp_utils")
    x = edge_values(rng, DEVICE)  # NaN: torchao gives the code 3 with NaN's sign
    q, y = run_codec(x, tf.FMT["fp4_e2m1"])
    want = custom._f32_to_floatx_unpacked(x.clamp(-6, 6).cpu(), 2, 1)
    assert torch.equal(q.cpu(), want.to(torch.int32))
    assert same_floats(y.cpu(), custom._floatx_unpacked_to_f32(want, 2, 1))


def test_e2m1_codec_of_nvfp4_equals_compressed_tensors(rng):
    """compressed-tensors rounds |x| and multiplies by torch.sign(x): -0 packs as 0, a small
    negative as 8 (torchao packs the sign bit of both)."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    from compressed_tensors.quantization.utils.fp4_utils import cast_to_fp4

    x = edge_values(rng, DEVICE)
    x = x[~x.isnan()]  # compressed-tensors' NaN codes depend on NaN payloads
    x = x[: x.numel() // 2 * 2]
    q, _ = run_codec(x, tf.FMT_E2M1_CT)
    want = pack_fp4_to_uint8(cast_to_fp4(x.clamp(-6, 6).cpu().clone()).reshape(1, -1)).reshape(-1)
    got = (q[0::2] | (q[1::2] << 4)).cpu().to(torch.uint8)
    assert torch.equal(got, want)


@pytest.mark.parametrize("rule", ["floor", "rceil", "even"])
@pytest.mark.parametrize("element", ["fp8_e4m3", "fp4_e2m1"])
def test_e8m0_scale_equals_torchao(rng, rule, element):
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode

    amax = edge_values(rng, DEVICE).abs()
    amax = torch.cat([amax, torch.tensor([3.4e38, 2.0**-127, 2.0**-126, 5e-39, 1.5 * 2.0**8, 1.9 * 2.0**8],
                                         device=amax.device)])
    e = torch.empty(amax.shape, dtype=torch.int32, device=amax.device)
    v = torch.empty_like(amax)
    e8m0_kernel[(1,)](amax, e, v, amax.numel(), FMT=tf.FMT[element], RULE=tf.RULE[rule],
                      B=triton.next_power_of_2(amax.numel()))
    block = torch.zeros(amax.numel(), 32)
    block[:, 0] = amax.cpu()
    elem = torch.float8_e4m3fn if element == "fp8_e4m3" else torch.float4_e2m1fn_x2
    scale, _ = mx.to_mx(block, elem, 32, ScaleCalculationMode[rule.upper()])
    assert torch.equal(e.cpu(), scale.view(torch.uint8).flatten().to(torch.int32))
    want = torch.where(e == 255, float("nan"), torch.exp2(e.double() - 127).float())
    assert same_floats(v, want)
