"""`gpuquant quantize --scheme fp8|fp8-e5m2|mxfp8|mxfp4|nvfp4|nf4`, then inspect and
dequantize, in process (issue 21)."""

import json

import numpy as np
import pytest

import gpuquant as gq
from gpuquant.checkpoint.files import write_safetensors
from gpuquant.cli import main
from gpuquant.formats import quantize_float

W = np.random.default_rng(0).standard_normal((64, 96)).astype(np.float32)


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.safetensors"
    norm = np.ones(96, np.float32)
    write_safetensors(str(path), [("layer.weight", "F32", W), ("norm.weight", "F32", norm)],
                      {"format": "pt"})
    return path


@pytest.mark.parametrize("args, cfg", [
    (["--scheme", "fp8"], gq.QuantConfig.fp8_per_channel()),
    (["--scheme", "fp8-e5m2", "--granularity", "tensor"], gq.QuantConfig.fp8_per_tensor("fp8_e5m2")),
    (["--scheme", "fp8", "--granularity", "block", "--block-shape", "32,64"],
     gq.QuantConfig.fp8_block((32, 64))),
    (["--scheme", "fp8", "--granularity", "block"], gq.QuantConfig.fp8_block()),
    (["--scheme", "mxfp8", "--scale-rule", "rceil"], gq.QuantConfig.mxfp8("rceil")),
    (["--scheme", "mxfp4"], gq.QuantConfig.mxfp4()),
    (["--scheme", "mxfp4", "--scale-rule", "even"], gq.QuantConfig.mxfp4("even")),
    (["--scheme", "nvfp4"], gq.QuantConfig.nvfp4()),
    (["--scheme", "nf4", "--group-size", "128"], gq.QuantConfig.nf4(128)),
], ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_quantize_inspect_dequantize(tmp_path, model, capsys, args, cfg):
    out = tmp_path / "q.safetensors"
    assert main(["quantize", str(model), "-o", str(out), "--quiet", "--include", "layer.*", *args]) == 0
    loaded = gq.load(out)
    qt = loaded["layer.weight"]
    assert qt.config == cfg and np.array_equal(loaded["norm.weight"], np.ones(96, np.float32))
    codes, scale, gs = quantize_float(W, cfg)
    assert np.array_equal(qt.data, codes) and np.array_equal(qt.scale, scale)
    capsys.readouterr()
    assert main(["inspect", str(out), "--reference", str(model), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    row = next(r for r in report["tensors"] if r["name"] == "layer.weight")
    y = qt.dequantize()
    assert row["sqnr_db"] == pytest.approx(float(gq.sqnr(W, y)), rel=1e-6)
    assert row["bytes"] == qt.size_bytes and row["scheme"] == cfg.element
    back = tmp_path / "back.safetensors"
    assert main(["dequantize", str(out), "-o", str(back), "--quiet"]) == 0
    assert np.array_equal(gq.load(back)["layer.weight"], y)


@pytest.mark.parametrize("args, words", [
    (["--scheme", "nvfp4", "--scale-rule", "floor"], "--scale-rule applies"),
    (["--scheme", "mxfp4", "--granularity", "block"], "--granularity block applies"),
    (["--scheme", "fp8", "--block-shape", "4,4"], "--block-shape needs"),
    (["--scheme", "nf4", "--asymmetric"], "drop --asymmetric"),
    (["--scheme", "fp8", "--calibration", "mse"], "calibration='minmax'"),
    (["--scheme", "int8", "--granularity", "block"], "fp8 elements only"),
])
def test_options_that_do_not_apply_are_named(tmp_path, model, capsys, args, words):
    assert main(["quantize", str(model), "-o", str(tmp_path / "q.safetensors"), "--quiet", *args]) != 0
    assert words in capsys.readouterr().err
