"""The float-format Triton kernels against the peers their users trust, bit for bit.

The fused quantizers and dequantizers on tiny ragged shapes with edge values
(test_float_codecs.py tests the device codecs alone). Peers (test dependencies only): torch's
float8 casts and ml_dtypes (FP8), torchao's to_mx (MX), compressed-tensors
(NVFP4), bitsandbytes quantize_4bit on CPU (NF4). Without a GPU everything runs
under TRITON_INTERPRET=1 (conftest.py).
"""

import numpy as np
import pytest
from conftest import CUDA, INTERPRET

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
if not (CUDA or INTERPRET):
    pytest.skip("needs a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)

from float_cases import F8, FMAX, Cfg, pad_last, same_floats, unpack_low_first  # noqa: E402

from gpuquant.backends.triton import floats as tf  # noqa: E402
from gpuquant.backends.triton.launch import recording  # noqa: E402
from gpuquant.errors import QuantizationError  # noqa: E402
from gpuquant.kernels import float_codecs as fc  # noqa: E402

DEVICE = "cuda" if CUDA and not INTERPRET else "cpu"


def interpreter_input(rng, shape, scale=3.0, specials=True):
    x = (rng.standard_normal(shape) * scale * np.exp(rng.uniform(-3, 3, shape))).astype(np.float32)
    if specials:
        flat = x.reshape(-1)
        flat[1] = 0.0
        flat[2] = -1e-40
        flat[-1] = -x.max() * 1.00001 if x.size > 3 else flat[-1]
    return torch.from_numpy(x).to(DEVICE)


def fp8_peer(x, element, amax_of):
    """compressed-tensors' FP8: s = amax / fmax (zero: eps), codes of clamp(x / s) cast by torch."""
    fmax = FMAX[element]
    s = amax_of(x.abs()) / fmax
    s = torch.where(s == 0, torch.finfo(torch.float32).eps, s)
    return s, (x / s).clamp(-fmax, fmax).to(F8[element]).view(torch.uint8)


FP8_CASES = [((4, 37), "tensor", {}), ((5, 33), "channel", {}), ((2, 3, 33), "token", {}),
             ((3, 45), "group", {"group_size": 16}), ((2, 19), "group", {"group_size": 5}),
             ((7, 37), "block", {"block_shape": (4, 16)}), ((6, 9000), "token", {})]


def fp8_expected(x, gran, kw, element):
    if gran == "tensor":
        return fp8_peer(x, element, lambda a: a.amax())
    if gran in ("channel", "token"):
        rows = x.reshape(x.shape[0], -1) if gran == "channel" else x
        s, q = fp8_peer(rows, element, lambda a: a.amax(-1, keepdim=True))
        return s.squeeze(-1), q.reshape(x.shape)
    if gran == "group":
        return group_expected(x, kw["group_size"], element)
    bn, bk = kw["block_shape"]
    n, k = x.shape
    pn, pk = -(-n // bn) * bn, -(-k // bk) * bk
    padded = torch.nn.functional.pad(x, (0, pk - k, 0, pn - n)).reshape(pn // bn, bn, pk // bk, bk)
    s, q = fp8_peer(padded, element, lambda a: a.amax((1, 3), keepdim=True))
    return s.reshape(pn // bn, pk // bk), q.reshape(pn, pk)[:n, :k]


def group_expected(x, g, element):
    k = x.shape[-1]
    pk = -(-k // g) * g
    padded = torch.nn.functional.pad(x, (0, pk - k)).reshape(*x.shape[:-1], pk // g, g)
    s, q = fp8_peer(padded, element, lambda a: a.amax(-1, keepdim=True))
    return s.squeeze(-1), q.reshape(*x.shape[:-1], pk)[..., :k]


@pytest.mark.parametrize("element", ["fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("shape,gran,kw", FP8_CASES)
def test_fp8_quantize_equals_peer(rng, element, shape, gran, kw):
    x = interpreter_input(rng, shape)
    cfg = Cfg(element=element, granularity=gran, **kw)
    codes, scale, gs = tf.quantize_float(x, cfg)
    want_s, want_q = fp8_expected(x.cpu(), gran, kw, element)
    assert gs is None and codes.dtype == torch.uint8
    assert torch.equal(codes.cpu(), want_q) and torch.equal(scale.cpu(), want_s)
    y = tf.dequantize_float(codes, scale, gs, cfg, shape)
    assert torch.equal(y.cpu(), dequant_fp8(want_q, want_s, gran, kw, element, x.shape))


def dequant_fp8(q, s, gran, kw, element, shape):
    v = q.view(F8[element]).float()
    if gran == "tensor":
        return v * s
    if gran in ("channel", "token"):
        return v * s.reshape(*s.shape, *([1] * (len(shape) - s.ndim)))
    if gran == "group":
        return v * s.repeat_interleave(kw["group_size"], -1)[..., :shape[-1]]
    bn, bk = kw["block_shape"]
    full = s.repeat_interleave(bn, 0).repeat_interleave(bk, 1)
    return v * full[:shape[0], :shape[1]]


def test_fp8_nonfinite_and_zero_units():
    x = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, float("nan"), 2.0, -3.0], [float("inf"), 1.0, -1.0, 0.5]],
                     device=DEVICE)
    codes, scale, _ = tf.quantize_float(x, Cfg(granularity="token"))
    want_s, want_q = fp8_expected(x.cpu(), "token", {}, "fp8_e4m3")
    assert same_floats(scale.cpu(), want_s) and torch.equal(codes.cpu(), want_q)
    assert scale[0].item() == np.finfo(np.float32).eps


@pytest.mark.parametrize("rule", ["floor", "rceil", "even"])
@pytest.mark.parametrize("element", ["fp8_e4m3", "fp8_e5m2", "fp4_e2m1"])
def test_mx_quantize_equals_torchao(rng, rule, element):
    mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")
    from torchao.prototype.mx_formats.config import ScaleCalculationMode

    x = interpreter_input(rng, (3, 75))
    x[1, 40:72] = 0.0  # an all-zero block
    x[2, 5] = float("nan")  # a NaN block: scale 255, the other elements scaled by +inf (FLOOR, EVEN)
    x[0, 3] = -0.0
    cfg = Cfg(element=element, scale_format="e8m0", granularity="group", group_size=32, scale_rule=rule)
    codes, scale, gs = tf.quantize_float(x, cfg)
    elem = F8.get(element, torch.float4_e2m1fn_x2)
    want_s, want_d = mx.to_mx(pad_last(x.cpu(), 32), elem, 32, ScaleCalculationMode[rule.upper()])
    assert gs is None and torch.equal(scale.cpu(), want_s.view(torch.uint8))
    if element == "fp4_e2m1":
        assert codes.shape == (3, 38)
        assert torch.equal(unpack_low_first(codes.cpu(), 75), unpack_low_first(want_d.view(torch.uint8), 75))
        assert torch.equal(codes.cpu()[:, -1] >> 4, torch.zeros(3, dtype=torch.uint8))  # padded nibble
    else:
        assert torch.equal(codes.cpu(), want_d.view(torch.uint8)[:, :75])
    y = tf.dequantize_float(codes, scale, gs, cfg, x.shape)
    vals = torch.exp2(scale.cpu().double() - 127).float().repeat_interleave(32, -1)[:, :75]
    vals = torch.where(scale.cpu().repeat_interleave(32, -1)[:, :75] == 255, float("nan"), vals)
    if element == "fp4_e2m1":
        from torchao.prototype.custom_fp_utils import _floatx_unpacked_to_f32
        elems = _floatx_unpacked_to_f32(unpack_low_first(codes.cpu(), 75), 2, 1)
    else:
        elems = codes.cpu().view(elem).float()
    assert same_floats(y.cpu(), elems * vals)


def nvfp4_peer(x):
    """compressed-tensors' NVFP4: global scale, e4m3 group scales, packed E2M1 codes."""
    from compressed_tensors.compressors.nvfp4.helpers import quantize_and_pack_fp4
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.utils.helpers import calculate_qparams, generate_gparam

    args = QuantizationArgs(num_bits=4, type="float", strategy="tensor_group", group_size=16,
                            symmetric=True, scale_dtype=torch.float8_e4m3fn)
    gs = generate_gparam(x.min(), x.max())
    groups = x.reshape(x.shape[0], -1, 16)
    scale, _ = calculate_qparams(groups.amin(-1), groups.amax(-1), args, global_scale=gs)
    return quantize_and_pack_fp4(x, scale, global_scale=gs, group_size=16), scale, gs


def modelopt_peer(x):
    """ModelOpt's NVFP4QTensor.quantize: (packed codes, e4m3 block scales, weight_scale_2)."""
    from modelopt.torch.quantization.qtensor.nvfp4_tensor import NVFP4QTensor

    q, s, s2 = NVFP4QTensor.quantize(x.clone(), 16)
    return q._quantized_data, s, s2


def nvfp4_input(rng, inf):
    x = interpreter_input(rng, (3, 37))
    x[0, :16] = 0.0  # a zero block: scale 0.125 (compressed-tensors) / 1 (ModelOpt)
    x[1, 16:32] *= 1e-6  # a block whose scale rounds into e4m3 subnormals (ModelOpt: floored at 2^-9)
    x[2, 1:3] = torch.tensor([-0.0, -1e-3 * x[2].abs().max().item()])  # -0 packs as 0, -tiny as 8
    if inf:
        x[2, 20] = float("inf")  # amax inf: global scale 0, a NaN block scale, NaN elements give 0
    return x


@pytest.mark.parametrize("inf", [False, True])
def test_nvfp4_quantize_equals_compressed_tensors(rng, inf):
    pytest.importorskip("compressed_tensors")
    x = nvfp4_input(rng, inf)
    cfg = Cfg(element="fp4_e2m1", scale_format="e4m3", granularity="group", group_size=16)
    codes, scale, gs = tf.quantize_float(x, cfg)
    want_q, want_s, want_gs = nvfp4_peer(pad_last(x.cpu(), 16))
    assert codes.shape == (3, 19) and scale.dtype == torch.uint8
    assert torch.equal(unpack_low_first(codes.cpu(), 37), unpack_low_first(want_q, 37))
    assert torch.equal(scale.cpu(), want_s.to(torch.float8_e4m3fn).view(torch.uint8))
    assert torch.equal(gs.cpu(), want_gs.reshape(()))
    y = tf.dequantize_float(codes, scale, gs, cfg, x.shape)
    from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8

    vals = unpack_fp4_from_uint8(want_q, 3, 48, dtype=torch.float32)[:, :37]
    per = want_s.to(torch.float8_e4m3fn).float() / want_gs
    assert same_floats(y.cpu(), vals * per.repeat_interleave(16, -1)[:, :37])


def test_nvfp4_modelopt_convention_equals_modelopt(rng):
    pytest.importorskip("modelopt.torch.quantization.qtensor.nvfp4_tensor")
    x = nvfp4_input(rng, inf=False)
    cfg = Cfg(element="fp4_e2m1", scale_format="e4m3", granularity="group", group_size=16,
              global_scale_convention="modelopt")
    codes, scale, gs = tf.quantize_float(x, cfg)
    want_q, want_s, want_s2 = modelopt_peer(pad_last(x.cpu(), 16))
    assert torch.equal(unpack_low_first(codes.cpu(), 37), unpack_low_first(want_q, 37))
    assert torch.equal(scale.cpu(), want_s.view(torch.uint8))
    assert torch.equal(gs.cpu(), want_s2.reshape(()))
    y = tf.dequantize_float(codes, scale, gs, cfg, x.shape)
    from torchao.prototype.custom_fp_utils import _floatx_unpacked_to_f32

    vals = _floatx_unpacked_to_f32(unpack_low_first(want_q, 37), 2, 1)
    per = (want_s.float() * want_s2).repeat_interleave(16, -1)[:, :37]
    assert torch.equal(y.cpu(), vals * per)


@pytest.mark.parametrize("seed", range(8))
def test_nvfp4_across_magnitudes(seed):
    """The global scale rounds as torch evaluates 2688 / amax (a reciprocal, then a product)."""
    pytest.importorskip("compressed_tensors")
    rng = np.random.default_rng(seed)
    x = interpreter_input(rng, (2, 41), scale=float(np.exp(rng.uniform(-30, 30))), specials=False)
    cfg = Cfg(element="fp4_e2m1", scale_format="e4m3", granularity="group", group_size=16)
    codes, scale, gs = tf.quantize_float(x, cfg)
    want_q, want_s, want_gs = nvfp4_peer(pad_last(x.cpu(), 16))
    assert torch.equal(gs.cpu(), want_gs.reshape(()))
    assert torch.equal(scale.cpu(), want_s.to(torch.float8_e4m3fn).view(torch.uint8))
    assert torch.equal(unpack_low_first(codes.cpu(), 41), unpack_low_first(want_q, 41))


@pytest.mark.parametrize("shape,bs", [((3, 50), 64), ((2, 64), 32), ((9, 7), 64), ((130,), 128)])
def test_nf4_quantize_equals_bitsandbytes(rng, shape, bs):
    bnb = pytest.importorskip("bitsandbytes.functional")
    x = interpreter_input(rng, shape)
    x.reshape(-1)[:bs] = x.reshape(-1)[:bs] * 0 + 0.0  # a zero block
    if x.numel() > 2 * bs:
        x.reshape(-1)[bs + 3] = float("nan")  # a NaN block: absmax NaN, every code 15
    cfg = Cfg(element="nf4", granularity="group", group_size=bs)
    codes, scale, gs = tf.quantize_float(x, cfg)
    want_q, state = bnb.quantize_4bit(x.cpu(), blocksize=bs, quant_type="nf4")
    assert gs is None and torch.equal(codes.cpu(), want_q.view(torch.uint8).reshape(-1))
    assert same_floats(scale.cpu(), state.absmax)
    y = tf.dequantize_float(codes, scale, gs, cfg, shape)
    finite = ~state.absmax.isnan().any()
    if finite:
        assert torch.equal(y.cpu(), bnb.dequantize_4bit(want_q, state).reshape(shape))


def test_nf4_ties_take_the_lower_code():
    mids = torch.tensor(fc._MID, dtype=torch.float32)
    x = torch.cat([mids, torch.tensor([1.0, -1.0, 0.0])]).to(DEVICE)  # absmax 1: x is its own scaled value
    codes, scale, _ = tf.quantize_float(x, Cfg(element="nf4", group_size=len(x)))
    hi, lo = codes.cpu() >> 4, codes.cpu() & 0xF
    got = torch.stack([hi, lo], -1).reshape(-1)[:len(x)]
    assert torch.equal(got[:15], torch.arange(15, dtype=torch.uint8))


@pytest.mark.parametrize("gran,g", [("token", None), ("group", 16)])
def test_dynamic_fp8_equals_vllm_formula(rng, gran, g):
    x = interpreter_input(rng, (2, 3, 40))
    x[0, 0] = 0.0
    x[0, 1] *= 1e-5  # under vLLM's per-token floor
    codes, scale = tf.quantize_fp8_dynamic(x, gran, g or 128)
    xc = x.cpu()
    if gran == "token":
        s = torch.clamp(xc.abs().amax(-1, keepdim=True) / 448.0, min=np.float32(1 / (448 * 512)))
        q = (xc / s).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8)
        assert torch.equal(scale.cpu(), s.squeeze(-1)) and torch.equal(codes.cpu(), q)
    else:
        p = pad_last(xc, g).reshape(2, 3, -1, g)
        s = p.abs().amax(-1, keepdim=True).clamp(min=np.float32(1e-10)) / 448.0
        q = (p / s).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8).reshape(2, 3, -1)[..., :40]
        assert torch.equal(scale.cpu(), s.squeeze(-1)) and torch.equal(codes.cpu(), q)


def count_launches(fn):
    with recording() as launches:
        fn()
    return [launch.name for launch in launches]


def test_launch_counts():
    x = torch.zeros((4, 64), device=DEVICE)
    assert count_launches(lambda: tf.quantize_float(x, Cfg())) == ["amax_kernel", "float_units_kernel"]
    mx = Cfg(element="fp4_e2m1", scale_format="e8m0", group_size=32)
    assert count_launches(lambda: tf.quantize_float(x, mx)) == ["float_units_kernel"]
    nv = Cfg(element="fp4_e2m1", scale_format="e4m3", group_size=16)
    assert count_launches(lambda: tf.quantize_float(x, nv)) == ["amax_kernel", "float_units_kernel"]
    for cfg in (Cfg(granularity="token"), Cfg(element="nf4", group_size=64)):
        assert count_launches(lambda cfg=cfg: tf.quantize_float(x, cfg)) == ["float_units_kernel"]
    assert count_launches(lambda: tf.quantize_float(x, Cfg(granularity="block", block_shape=(2, 32)))) == [
        "float_blocks_kernel"]
    codes = torch.zeros((4, 32), dtype=torch.uint8, device=DEVICE)
    scale = torch.zeros((4, 2), dtype=torch.uint8, device=DEVICE)
    assert count_launches(lambda: tf.dequantize_float(codes, scale, None, mx, (4, 64))) == [
        "float_dequant_kernel"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_input_dtypes_are_widened_first(rng, dtype):
    x = interpreter_input(rng, (3, 40)).to(dtype)
    cfg = Cfg(granularity="group", group_size=16)
    codes, scale, _ = tf.quantize_float(x, cfg)
    want_s, want_q = group_expected(x.float().cpu(), 16, "fp8_e4m3")
    assert torch.equal(codes.cpu(), want_q) and torch.equal(scale.cpu(), want_s)
    y = tf.dequantize_float(codes, scale, None, cfg, x.shape, dtype=torch.bfloat16)
    assert y.dtype == torch.bfloat16
    assert torch.equal(y.cpu(), (want_q.view(torch.float8_e4m3fn).float()
                                 * want_s.repeat_interleave(16, -1)[:, :40]).to(torch.bfloat16))


@pytest.mark.parametrize("cfg,shape", [(Cfg(element="int8"), (4, 4)),
                                       (Cfg(element="fp4_e2m1"), (4, 4)),
                                       (Cfg(granularity="channel", axis=1), (4, 4)),
                                       (Cfg(granularity="block", block_shape=(2, 2)), (2, 2, 2)),
                                       (Cfg(element="nf4", group_size=7), (4, 4)),
                                       (Cfg(scale_format="e8m0", scale_rule="up"), (4, 4))])
def test_bad_configs_raise(cfg, shape):
    with pytest.raises(QuantizationError):
        tf.quantize_float(torch.zeros(shape, device=DEVICE), cfg)


@pytest.mark.slow
def test_float_kernels_compile_for_sm90_without_approximate_division():
    from ptx_checks import compile_report

    report = compile_report("compile_float_kernels.py")
    assert report["problems"] == []
    assert set(report["kernels"]) == {"amax_kernel", "float_units_kernel", "float_rows_kernel",
                                      "float_blocks_kernel", "float_dequant_kernel",
                                      "mean_kernel", "nest_kernel", "unnest_kernel"}  # NF4 double quant
    assert report["compiled"] > 60


def test_dequantize_checks_its_inputs():
    cfg = Cfg(element="fp4_e2m1", scale_format="e8m0", group_size=32)
    codes = torch.zeros((4, 32), dtype=torch.uint8, device=DEVICE)
    with pytest.raises(QuantizationError, match="scale"):
        tf.dequantize_float(codes, torch.zeros((4, 2), device=DEVICE), None, cfg, (4, 64))
    with pytest.raises(QuantizationError, match="expected"):
        tf.dequantize_float(codes, torch.zeros((4, 3), dtype=torch.uint8, device=DEVICE), None, cfg, (4, 64))
    nv = Cfg(element="fp4_e2m1", scale_format="e4m3", group_size=16)
    with pytest.raises(QuantizationError, match="global_scale"):
        tf.dequantize_float(codes, torch.zeros((4, 4), dtype=torch.uint8, device=DEVICE), None, nv, (4, 64))
