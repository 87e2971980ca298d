"""scale_rule="half_range": compressed-tensors' (and llm-compressor's min/max) symmetric integer
rule, amax / ((qmax - qmin) / 2) with codes x / scale, against compressed-tensors' own
calculate_qparams + quantize and its pack-quantized compressor, on the NumPy reference and
under the Triton interpreter; the seed's "max" rule stays the default."""

import json
import os

import numpy as np
import pytest
from conftest import CUDA, INTERPRET, codes_of, one_line_error

import gpuquant as gq

torch = pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")

HALF = dict(symmetric=True, scale_rule="half_range")
TRITON = pytest.mark.skipif(not (CUDA or INTERPRET), reason="needs CUDA or TRITON_INTERPRET=1")


# ------------------------------------------------------------------ config
def test_config_default_values_and_errors():
    assert gq.QuantConfig().scale_rule == "max"
    cfg = gq.QuantConfig(scheme="int4", granularity="group", **HALF)
    assert cfg != cfg.replace(scale_rule="max") and hash(cfg) != hash(cfg.replace(scale_rule="max"))
    assert gq.QuantConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["scale_rule"] == "half_range" and "half_range" in cfg.describe()
    assert "scale_rule" not in gq.QuantConfig().to_dict()  # files of the default rule unchanged
    assert "scale_rule='half_range'" in repr(cfg)
    with pytest.raises(gq.UnsupportedSchemeError, match=r"scale_rule='floor'.*'max', 'half_range'"):
        gq.QuantConfig(scale_rule="floor")
    with pytest.raises(gq.UnsupportedSchemeError, match="symmetric=True only"):
        gq.QuantConfig(symmetric=False, scale_rule="half_range")
    with pytest.raises(gq.UnsupportedSchemeError, match="scale_rule='half_range'"):
        gq.QuantConfig.mxfp4(scale_rule="half_range")
    # the integer default carried into a float scheme by replace means nothing there; MX
    # takes its own rules only
    assert gq.QuantConfig().replace(scheme="fp8_e4m3").scale_rule is None
    with pytest.raises(gq.UnsupportedSchemeError, match="'floor', 'rceil', 'even'"):
        gq.QuantConfig.mxfp8(scale_rule="max")


def test_save_load_and_torch_ops_keep_the_rule(tmp_path):
    from gpuquant import torch_ops

    cfg = gq.QuantConfig(scheme="int4", granularity="group", group_size=32, **HALF)
    x = torch.randn(4, 64)
    qt = gq.quantize(x, cfg)
    gq.save(str(tmp_path / "q.safetensors"), {"w": qt})
    back = gq.load(str(tmp_path / "q.safetensors"))["w"]
    assert back.config == cfg and np.array_equal(np.asarray(back.scale), qt.scale.numpy())
    args = torch_ops.config_args(cfg)
    assert torch_ops.config_of(*args, False) == cfg
    codes, scale, _ = torch.ops.gpuquant.quantize_minmax(x, *args, False)
    assert torch.equal(codes, qt.data) and torch.equal(scale, qt.scale)
    assert not torch.equal(scale, gq.quantize(x, cfg.replace(scale_rule="max")).scale)


# ----------------------------------------------- compressed-tensors, one tensor
def ct_reference(w, bits, strategy, group_size=None):
    """compressed-tensors' scale and int8 codes of ``w`` from its per-unit min/max (what
    llm-compressor's MinMax observer gives calculate_qparams), in w's dtype."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import quantize
    from compressed_tensors.quantization.utils import calculate_qparams

    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy=strategy,
                            group_size=group_size)
    if strategy == "group":
        units = w.unflatten(-1, (-1, group_size))
        lo, hi = units.amin(-1), units.amax(-1)
    else:
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
    scale, zp = calculate_qparams(lo, hi, args)
    return scale, quantize(w, scale, zp, args, dtype=torch.int8)


def weights(rows, cols, seed=0):
    """Random rows, a row of zeros, and rows of exact ties: x / scale = k + 0.5 with scales
    that are not powers of two (the multiply by 1 / scale need not give k + 0.5 there)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    w[1] = 0.0
    for r, m in ((2, 3.0), (3, 13.0), (4, 0.7)):
        s = np.float32(m * 2.0 ** -9)
        k = rng.integers(-8, 8, cols).astype(np.float32) + np.float32(0.5)
        k[:2] = (-7.5, 7.5)  # amax 7.5 * s: the scale is s
        w[r] = k * s
    w[5, :7] = (-1.0, 1.0, 0.5, -0.5, 0.25, 1e-3, -1e-3)
    return w


CASES = [(4, "group", 128, (12, 512)), (8, "channel", None, (12, 200)),
         (4, "channel", None, (9, 64)), (8, "group", 64, (7, 192))]


def config_of_case(bits, strategy, group):
    return gq.QuantConfig(scheme=f"int{bits}", granularity=strategy, group_size=group, axis=0,
                          **HALF)


def check_against_ct(qt, w, bits, strategy, group):
    scale, codes = ct_reference(w, bits, strategy, group)
    got_scale = qt.scale.cpu() if hasattr(qt.scale, "cpu") else torch.from_numpy(qt.scale)
    assert torch.equal(got_scale.reshape(scale.shape), scale)
    assert np.array_equal(codes_of(qt), codes.numpy())


@pytest.mark.parametrize("bits,strategy,group,shape", CASES)
def test_numpy_reference_equals_compressed_tensors(bits, strategy, group, shape):
    w = weights(*shape)
    qt = gq.quantize(w, config_of_case(bits, strategy, group), backend="numpy")
    check_against_ct(qt, torch.from_numpy(w), bits, strategy, group)
    codes = codes_of(qt)
    assert (codes[1] == 0).all() and np.all(np.asarray(qt.scale).reshape(shape[0], -1)[1] == 2.0 ** -23)
    assert codes[2, 0] == -(1 << (bits - 1))  # -amax: -(qmax - qmin) / 2 ties to even, qmin
    if bits == 4:  # rows 2, 3 have the scale s and x / s = k + 0.5 exactly: half to even
        n = group or shape[1]  # the first unit of the row, whose amax is 7.5 s
        k = w[2:4, 2:n] / (w[2:4, 1:2] / np.float32(7.5))
        assert np.all(k % 1 == 0.5) and np.array_equal(codes[2:4, 2:n], np.rint(k).clip(-8, 7))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_inputs(dtype):
    """gpuquant widens bf16/fp16 exactly and keeps a float32 scale: equal to compressed-tensors
    given the widened weight; compressed-tensors' own scale, computed in the weight's dtype,
    is that float32 scale rounded to the dtype (what the export stores)."""
    w = torch.from_numpy(weights(10, 256)).to(getattr(torch, dtype))
    qt = gq.quantize(w, config_of_case(4, "group", 128), backend="numpy")
    check_against_ct(qt, w.float(), 4, "group", 128)
    theirs, _ = ct_reference(w, 4, "group", 128)
    nonzero = qt.scale.reshape(theirs.shape) != 2.0 ** -23  # zero groups: the dtype's eps there
    assert torch.equal(qt.scale.reshape(theirs.shape).to(w.dtype)[nonzero], theirs[nonzero])


@TRITON
@pytest.mark.parametrize("bits,strategy,group,shape", CASES)
def test_triton_equals_numpy_and_compressed_tensors(bits, strategy, group, shape):
    w = torch.from_numpy(weights(*shape))
    cfg = config_of_case(bits, strategy, group)
    got = gq.quantize(w, cfg, backend="triton")
    want = gq.quantize(w, cfg, backend="numpy")
    for name in ("data", "scale", "zero_point"):
        assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), name
    check_against_ct(got, w, bits, strategy, group)
    given = gq.quantize(w, cfg, qparams=(got.scale, got.zero_point), backend="triton")
    assert torch.equal(given.data.cpu(), want.data)


@TRITON
@pytest.mark.parametrize("kw", [dict(granularity="tensor"), dict(granularity="channel", axis=-1),
                                dict(granularity="group", group_size=5),
                                dict(granularity="token")])
def test_triton_staged_paths_and_mse(kw):
    w = torch.from_numpy(weights(6, 40))
    for calibration in ("minmax", "mse"):
        cfg = gq.QuantConfig(scheme="int4", calibration=calibration, **HALF, **kw)
        got = gq.quantize(w, cfg, backend="triton")
        want = gq.quantize(w, cfg, backend="numpy")
        for name in ("data", "scale", "zero_point"):
            assert torch.equal(getattr(got, name).cpu(), getattr(want, name)), (name, calibration)


@TRITON
def test_pack32_kernel_divides_like_the_reference():
    from gpuquant.backends import select_for

    w = torch.from_numpy(weights(8, 256))
    cfg = gq.QuantConfig(scheme="int4", granularity="group", group_size=128, nibble_order="low_first",
                         **HALF)
    p = gq.calibrate(w, cfg, backend="numpy")
    ours = select_for(w.numpy()).quantize_pack32(w.numpy(), p.scale, p.zero_point, cfg)
    from gpuquant.backends.triton import export

    got = export.quantize_pack32(w, p.scale, p.zero_point, 4, True, 128, half_range=True)
    assert np.array_equal(got.cpu().numpy(), ours)
    plain = export.quantize_pack32(w, p.scale, p.zero_point, 4, True, 128)
    assert not np.array_equal(plain.cpu().numpy(), ours)  # the division changed some ties


# ------------------------------------------------------------- the export
def _ct_module(w, bits, group):
    """compressed-tensors' pack-quantized tensors of one Linear weight with its own min/max
    qparams (computed in the weight's dtype, as llm-compressor's observer does); the codes
    from the float32 weight and scale: its CUDA (Triton) quantize path."""
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scale, _ = ct_reference(w, bits, "group", group)
    args = QuantizationArgs(num_bits=bits, type="int", symmetric=True, strategy="group",
                            group_size=group)
    state = {"weight": w.float(), "weight_scale": scale.float()}
    out = PackedQuantizationCompressor.compress(state, QuantizationScheme(targets=["Linear"],
                                                                          weights=args))
    return out["weight_packed"].numpy(), scale


def _model(tmp_path, dtype):
    from export_models import save_llama
    from safetensors.torch import load_file, save_file

    src = save_llama(tmp_path / f"llama_{dtype}", dtype=dtype, layers=1)
    path = os.path.join(src, "model.safetensors")
    tensors = load_file(path)
    w = tensors["model.layers.0.mlp.up_proj.weight"]
    w[3, :32] = 0  # an all-zero group: compressed-tensors' eps of the scale's dtype
    s = 3 * 2.0 ** -10
    w[5, :32] = (torch.arange(32) % 16 - 7.5).to(w.dtype) * s  # exact ties of x / scale
    save_file(tensors, path, metadata={"format": "pt"})
    return src


@pytest.mark.parametrize("dtype,bits", [("float32", 4), ("bfloat16", 4), ("float32", 8)])
def test_export_bytes_equal_compressed_tensors(tmp_path, dtype, bits):
    from export_models import read_tensors

    from gpuquant.cli import main

    src, out = _model(tmp_path, dtype), str(tmp_path / "out")
    assert main(["export", src, "-o", out, "--scheme", f"int{bits}", "--group-size", "32",
                 "--scale-rule", "half_range", "--device", "cpu", "--quiet"]) == 0
    ours = read_tensors(out)
    checked = 0
    from safetensors.torch import load_file

    for key, w in load_file(os.path.join(src, "model.safetensors")).items():
        module = key.removesuffix(".weight")
        if module + ".weight_packed" not in ours:
            continue
        packed, scale = _ct_module(w, bits, 32)
        assert np.array_equal(ours[module + ".weight_packed"], packed), key
        want = scale.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" \
            else scale.numpy()
        assert ours[module + ".weight_scale"].dtype == want.dtype
        assert np.array_equal(ours[module + ".weight_scale"], want), key
        assert ours[module + ".weight_shape"].tolist() == list(w.shape)
        checked += 1
    assert checked == 7
    with open(os.path.join(out, "config.json")) as f:
        assert json.load(f)["quantization_config"]["config_groups"]["group_0"]["weights"][
            "symmetric"] is True
    if dtype == "bfloat16":  # the zero group's stored scale is bfloat16's eps, 2^-7
        s = ours["model.layers.0.mlp.up_proj.weight_scale"]
        assert s[3, 0] == 0x3C00


def test_export_default_rule_differs_and_cli_refusals(tmp_path, capsys):
    from export_models import read_tensors, save_llama

    from gpuquant.cli import main

    src = save_llama(tmp_path / "llama", layers=1)
    outs = {}
    for rule in ("max", "half_range"):
        outs[rule] = str(tmp_path / rule)
        assert main(["export", src, "-o", outs[rule], "--group-size", "32", "--scale-rule", rule,
                     "--device", "cpu", "--quiet"]) == 0
    key = "model.layers.0.mlp.up_proj.weight_scale"
    a, b = read_tensors(outs["max"])[key], read_tensors(outs["half_range"])[key]
    assert np.allclose(a * 7, b * 7.5, rtol=1e-6) and not np.array_equal(a, b)
    capsys.readouterr()
    for argv, words in ((["--scale-rule", "floor"], "integer schemes (max, half_range)"),
                        (["--asymmetric", "--scale-rule", "half_range"], "drop --asymmetric"),
                        (["--scheme", "fp8", "--scale-rule", "half_range"], "leave it out")):
        one_line_error(capsys, ["export", src, "-o", str(tmp_path / "bad"), *argv], words)
        assert not (tmp_path / "bad").exists()


def test_quantize_cli_scale_rule(tmp_path, capsys):
    from safetensors.torch import save_file

    from gpuquant.cli import main

    src, out = str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors")
    x = torch.randn(8, 256)
    save_file({"w": x}, src)
    assert main(["quantize", src, "-o", out, "--scheme", "int4", "--granularity", "group",
                 "--scale-rule", "half_range", "--quiet"]) == 0
    qt = gq.load(out)["w"]
    assert qt.config.scale_rule == "half_range"
    want = gq.quantize(x.numpy(), gq.QuantConfig(scheme="int4", granularity="group", **HALF))
    assert np.array_equal(np.asarray(qt.data), want.data)
    capsys.readouterr()
    for argv in (["--scheme", "int8", "--scale-rule", "rceil"],
                 ["--scheme", "mxfp4", "--scale-rule", "half_range"]):
        one_line_error(capsys, ["quantize", src, "-o", str(tmp_path / "bad.safetensors"), *argv],
                       "--scale-rule")


@pytest.mark.slow
def test_half_range_specialisations_compile_for_sm90():
    pytest.importorskip("triton")
    from ptx_checks import compile_report

    report = compile_report("compile_scale_rule.py")
    assert report["problems"] == []
    assert {"fused_units_kernel", "finalize_qparams_kernel", "quantize_tile_kernel",
            "mse_sweep_kernel", "quantize_pack32_kernel"} <= set(report["kernels"])
